"""Check answers against the Docker Engine API specification (docs/docker-engine-api-v1.41.yaml).

The spec is Swagger 2.0; its schemas are JSON Schema draft 4 with ``$ref``s into ``definitions``.
dockerd itself sends ``null`` for many fields the spec types as arrays or objects, so null is
accepted everywhere; types, required fields and the shape of nested objects are checked.
"""

from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml

SPEC = Path(__file__).resolve().parent.parent / "docs" / "docker-engine-api-v1.41.yaml"


def _nullable(node):
    if isinstance(node, dict):
        node = {k: _nullable(v) for k, v in node.items()}
        if isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        return node
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


@lru_cache(maxsize=1)
def spec() -> dict:
    return _nullable(yaml.safe_load(SPEC.read_text()))


def response_schema(path: str, method: str, status: int) -> dict:
    """The schema of one answer, e.g. ``response_schema("/info", "get", 200)``."""
    operation = spec()["paths"][path][method.lower()]
    schema = operation["responses"][status]["schema"]
    return {"definitions": spec()["definitions"], **schema}


def validate(instance, path: str, method: str = "get", status: int = 200) -> None:
    """Raise jsonschema.ValidationError unless ``instance`` is a valid answer of the spec."""
    jsonschema.Draft4Validator(response_schema(path, method, status)).validate(instance)
