"""The published JSON Schema (draft 2020-12) of `ondeck.yaml`, for editors and CI.

Derived from the pydantic models, plus what pydantic cannot say: an environment
overlay is the spec's structure with nothing required, and names are DNS labels.
Printed by `ondeck schema`; `docs.py` reads its types.
"""

from __future__ import annotations

import copy
from typing import Any

from ondeck.spec.model import DNS_LABEL, ENV_NAME, Spec
from ondeck.units import format_duration

SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "https://ondeck.dev/schema/ondeck.json"
OVERLAY = "SpecOverlay"
_NOT_IN_OVERLAY = ("app", "environments")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of `ondeck.yaml`; deterministic, a fresh dict on every call."""
    schema = Spec.model_json_schema()
    defs: dict[str, Any] = schema.pop("$defs")
    _constrain_names(schema, defs)
    _durations_as_text(schema)
    _durations_as_text(defs)
    partial = _Partial(defs)
    overlay = {k: v for k, v in schema.items() if k not in ("title", "required")}
    overlay["properties"] = {
        k: v for k, v in overlay["properties"].items() if k not in _NOT_IN_OVERLAY
    }
    overlay["description"] = "An environment's overlay: any part of the spec, deep-merged onto it."
    defs[OVERLAY] = {"title": OVERLAY, **partial.schema(overlay)}
    defs.update(partial.made)
    environments = schema["properties"]["environments"]
    environments["additionalProperties"] = {"$ref": f"#/$defs/{OVERLAY}"}
    head = {"$schema": SCHEMA_URI, "$id": SCHEMA_ID, "title": "ondeck.yaml"}
    body = {k: v for k, v in schema.items() if k != "title"}
    return {**head, **body, "$defs": dict(sorted(defs.items()))}


def _constrain_names(schema: dict[str, Any], defs: dict[str, Any]) -> None:
    """Say in the schema what the models' validators check on names."""
    names = {"pattern": DNS_LABEL.pattern}
    schema["properties"]["app"].update(names)
    for key in ("services", "backups", "environments"):
        schema["properties"][key]["propertyNames"] = dict(names)
    defs["Service"]["properties"]["env"]["propertyNames"] = {"pattern": ENV_NAME.pattern}


def _durations_as_text(node: Any) -> None:
    """Defaults of duration fields written as durations (`2s`), not as seconds (2.0)."""
    if isinstance(node, list):
        for item in node:
            _durations_as_text(item)
    if not isinstance(node, dict):
        return
    default = node.get("default")
    is_duration = node.get("type") == "string" and "pattern" in node and "ms|s|m" in node["pattern"]
    if is_duration and isinstance(default, int | float) and not isinstance(default, bool):
        node["default"] = format_duration(default) if default else "0s"
    for value in node.values():
        _durations_as_text(value)


class _Partial:
    """Builds the overlay variant of schemas: nothing required, no defaults, `XOverlay` refs.

    Array items stay whole: a list in an overlay replaces the base's list.
    """

    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs
        self.made: dict[str, Any] = {}

    def schema(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.schema(item) for item in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("required", "default"):
                continue
            if key == "$ref":
                out[key] = self._ref(value)
            elif key == "properties":
                out[key] = {name: self.schema(sub) for name, sub in value.items()}
            elif key == "items":
                out[key] = copy.deepcopy(value)
            else:
                out[key] = self.schema(value)
        return out

    def _ref(self, ref: str) -> str:
        name = ref.rsplit("/", 1)[-1]
        if "properties" not in self.defs.get(name, {}):
            return ref  # an enum or other leaf: the same in an overlay
        variant = f"{name}Overlay"
        if variant not in self.made:
            self.made[variant] = {}  # reserve first: a model may refer to itself
            self.made[variant] = self.schema(self.defs[name])
            self.made[variant]["title"] = variant
        return f"#/$defs/{variant}"
