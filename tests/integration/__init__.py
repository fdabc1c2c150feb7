"""The integration tier: every module with a test that needs the real broker, Redis or a `run` process
(some also hold pure tests, which the unit tier runs: the tier is the marker, see tests/conftest.py)."""
