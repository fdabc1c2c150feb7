"""The unit tier: no broker, no Redis, no `run` process, no network (`make test-unit`)."""
