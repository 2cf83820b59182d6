"""Fakes standing in for vendor libraries and drivers in tests that run without the hardware."""
