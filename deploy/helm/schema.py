"""Keeps the chart's values.schema.json `config` property equal to wattlens' own config model.

`python deploy/helm/schema.py` rewrites it from exporter.config.Config; tests/test_deploy.py fails when the
file and the model disagree. The rest of values.schema.json is written by hand.

The keys the chart sets itself (mount paths, listen address, pod watch, web config, node name) are left out,
so `config: {sys_path: ...}` is rejected as an unknown key instead of breaking the mounts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SCHEMA = Path(__file__).resolve().parent / "wattlens" / "values.schema.json"
CHART_OWNED = (
    "listen",
    "health_listen",
    "sys_path",
    "proc_path",
    "cgroup_root",
    "kubelet_log_path",
    "kubernetes_api",
    "kubernetes_api_server",
    "kubernetes_token_file",
    "kubernetes_ca_file",
    "pod_labels",
    "web_config_file",
    "node_name",
)
# JSON Schema keywords kept; pydantic's titles, its `format: path` and the `fix` hints are dropped (the
# hint becomes the description).
_KEEP = {"type", "properties", "additionalProperties", "items", "enum", "const", "anyOf", "minimum", "maximum",
         "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems", "minLength", "maxLength", "default",
         "description", "required"}


def _clean(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_clean(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _clean(defs[node["$ref"].rsplit("/", 1)[1]], defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "fix":
            out["description"] = value
        elif key == "properties":
            out[key] = {name: _clean(sub, defs) for name, sub in value.items()}
        elif key in _KEEP and key != "description":
            out[key] = _clean(value, defs)
    if "prefixItems" in node and "items" not in out:  # tuple[X, ...] in older pydantic
        out["items"] = _clean(node["prefixItems"][0], defs)
    return out


# What wattlens' durations accept besides a number of seconds (exporter.config.parse_duration).
DURATION_PATTERN = r"^\s*([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+\s*$"


def _durations_as_text_too(properties: dict[str, Any], names: set[str]) -> None:
    """`interval: 5s` is valid in wattlens.yaml, so the chart must not reject it: a duration is a number of
    seconds within its bounds, or a string with units (whose bounds wattlens checks at start)."""
    for name in names & properties.keys():
        number = {key: value for key, value in properties[name].items() if key not in ("default", "description")}
        text = {"type": "string", "pattern": DURATION_PATTERN}
        properties[name] = {
            "anyOf": [number, text],
            **{key: properties[name][key] for key in ("default", "description") if key in properties[name]},
        }


def config_schema() -> dict[str, Any]:
    """The `config` value's schema: wattlens' Config model without the keys the chart owns."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from exporter.config import Config, parse_duration  # noqa: PLC0415 (after the path is set)

    model = Config.model_json_schema()
    schema = _clean(model, model.get("$defs", {}))
    for key in CHART_OWNED:
        schema["properties"].pop(key)
    durations = {
        name
        for name, field in Config.model_fields.items()
        if any(getattr(meta, "func", None) is parse_duration for meta in field.metadata)
    }
    _durations_as_text_too(schema["properties"], durations)
    schema["description"] = (
        "wattlens settings (wattlens.yaml); generated from exporter/config.py by deploy/helm/schema.py"
    )
    return schema


def rendered() -> str:
    document = json.loads(SCHEMA.read_text())
    document["properties"]["config"] = config_schema()
    return json.dumps(document, indent=2) + "\n"


if __name__ == "__main__":
    SCHEMA.write_text(rendered())
