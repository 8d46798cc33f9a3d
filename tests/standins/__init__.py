"""Strict stand-ins for optional native packages, used by CPU-only tests."""
