"""The old name of :mod:`tests.support`, kept for the test modules that still import it (they move to
tests/unit and tests/integration with the engine and service refactors); import from ``.support``."""

from .support import *  # noqa: F403
from .support import FAST_CONSUMER, produce, stored_offset, unique  # noqa: F401
