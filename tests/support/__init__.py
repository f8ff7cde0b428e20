"""Shared helpers for the test suite (real registries, offline test images)."""
