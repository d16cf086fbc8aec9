"""Embodied carbon of the hardware: documented defaults (docs/carbon.md, docs/research/carbon.md) and the lookup
of an accelerator's figure by its model name.

Every figure is kgCO2e for manufacturing and transport (cradle to gate, end of life excluded), amortised over a
service lifetime. They are estimates with wide spreads; operators override them per node (the node's config) and
per accelerator model (`carbon.gpu_embodied_kg`).
"""

from __future__ import annotations

from collections.abc import Mapping

# BoaviztAPI 2.5.0 `dellR740` archetype (range 634-2,102 kg); Dell's own PowerEdge R740 PCF gives 1,313 kg
# for manufacturing (Boavizta/environmental-footprint-data, boavizta-data-us.csv).
HOST_EMBODIED_KG = 1200.0
# 4 years (4 × 365.25 days): what Dell's PCFs, BoaviztAPI (35,040 h), CCF/Teads and the SCI example amortise over.
LIFETIME_S = 4 * 365.25 * 86400.0

# BoaviztAPI 2.5.0 GPU component model (die, HBM, board, heatsink, transport), kgCO2e per card.
GPU_EMBODIED_KG: Mapping[str, float] = {
    "H100": 575.1,
    "A100": 567.7,
    "H200": 1067.0,
    "B200": 1415.0,
    "MI300X": 1497.0,
    "L40S": 277.1,
    "L4": 123.5,
}
# BoaviztAPI's default "Large GPU" (80 GB, 6 HBM dies), for a model the table does not name.
GPU_DEFAULT_EMBODIED_KG = 575.1


def gpu_embodied_kg(model: str, table: Mapping[str, float], default: float) -> float:
    """The figure of the longest table key found in `model` (case-insensitive), so "NVIDIA L40S" takes L40S and
    not L4; `default` when none is."""
    name = model.upper()
    found = [key for key in table if key.upper() in name]
    if not found:
        return default
    return table[max(found, key=len)]
