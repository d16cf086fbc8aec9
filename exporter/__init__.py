"""wattlens: a read-only node power exporter for Prometheus."""

__version__ = "0.1.0"
