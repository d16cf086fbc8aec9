"""Stub libamd_smi.so (AMD SMI) for tests (see README.md)."""
