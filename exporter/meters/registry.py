"""Every node meter, by the name the `meters` setting uses, and the module that implements it.

A meter module defines `open_meter(config, cpus) -> NodeMeter` (raising MeterUnavailable with a reason and a fix
when the node has nothing it can read). Adding a meter is that module plus one line below; the config accepts
the new name and `meters/select.py` tries it in the configured order. Modules are imported only when tried.
"""

from __future__ import annotations

NODE_METERS: dict[str, str] = {
    "rapl": "exporter.meters.rapl",
    "hwmon": "exporter.meters.hwmon",
    "model": "exporter.meters.model",
}
DEFAULT_ORDER = ("rapl", "hwmon", "model")
