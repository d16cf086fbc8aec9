"""Every meter, by name, and the module that implements it.

A node meter's module defines `open_meter(config, cpus) -> NodeMeter`, an accelerator meter's
`open_accelerator(config) -> AcceleratorMeter`; both raise MeterUnavailable with a reason and a fix when the node
has nothing they can read. Adding a meter is that module plus one line below: the config accepts the new name,
`meters/select.py` tries it (node meters in the configured order, accelerator meters whenever `gpus` is on) and
`wattlens check` reports it. Modules are imported only when tried.
"""

from __future__ import annotations

NODE_METERS: dict[str, str] = {
    "rapl": "exporter.meters.rapl",
    "hwmon": "exporter.meters.hwmon",
    "model": "exporter.meters.model",
}
DEFAULT_ORDER = ("rapl", "hwmon", "model")
ACCELERATOR_METERS: dict[str, str] = {
    "nvml": "exporter.meters.nvml_loader",  # imports pynvml only where the NVIDIA library is there
    "amdsmi": "exporter.meters.amd",
}
