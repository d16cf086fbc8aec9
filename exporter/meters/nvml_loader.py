"""Opening NVML only where the NVIDIA driver's library is there: pynvml costs 2.3 MiB of resident memory, and
most nodes have no GPU. The library is looked up the way pynvml loads it (dlopen of libnvidia-ml.so.1, which
honours LD_LIBRARY_PATH and the loader cache), without importing pynvml."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from exporter.meters.base import MeterUnavailable

if TYPE_CHECKING:
    from exporter.config import Config
    from exporter.meters.nvml import NvmlMeter

LIBRARY = "libnvidia-ml.so.1"
NOT_INSTALLED = f"the NVIDIA driver library {LIBRARY} is not installed"
FIX = (
    "on GPU nodes run with the NVIDIA container toolkit (NVIDIA_VISIBLE_DEVICES=all, "
    "NVIDIA_DRIVER_CAPABILITIES=utility) or put the driver's library directory on LD_LIBRARY_PATH"
)


def open_nvml(config: Config) -> NvmlMeter:
    """The NVML meter; MeterUnavailable without importing pynvml when the library cannot be loaded."""
    try:
        ctypes.CDLL(LIBRARY)
    except OSError:
        raise MeterUnavailable(f"no NVIDIA GPUs: {NOT_INSTALLED}", FIX) from None
    from exporter.meters.nvml import open_accelerator  # noqa: PLC0415 - only nodes with the NVIDIA library pay

    return open_accelerator(config)


def open_accelerator(config: Config) -> NvmlMeter:
    return open_nvml(config)
