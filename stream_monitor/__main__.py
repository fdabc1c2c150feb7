"""``python -m stream_monitor`` = the ``stream-monitor`` command."""

from .cli import main

raise SystemExit(main())
