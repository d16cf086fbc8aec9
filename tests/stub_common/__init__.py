"""Shared helpers of the C stub libraries used by the tests."""
