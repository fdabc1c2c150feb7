"""stream_monitor: real-time drift, data-quality and performance monitoring for ML models on Kafka."""

__version__ = "0.1.0"


def schema_path(name: str):
    """The JSON Schema ``name`` (``alert``, ``dead_letter``, ``inference_event``, ``label_event``) this version
    writes and reads, as an ``importlib.resources`` traversable (the wheel carries ``schemas/`` as package data).

    >>> import json
    >>> json.loads(schema_path("alert").read_text(encoding="utf-8"))["title"]
    'Alert'
    """
    from importlib.resources import files

    return files(__name__) / "schemas" / f"{name}.json"
