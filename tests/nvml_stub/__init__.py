"""Stub libnvidia-ml.so.1 for tests (see README.md)."""
