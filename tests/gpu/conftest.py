"""The real NVML backend for the ``gpu`` tests, skipped (with NVML's own reason) where it is not
available. Nothing in these tests sets anything on a device."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from accelpilot.collectors.backends.nvml import NvmlBackend

HOST = "gpu-test"


@pytest.fixture(scope="module")
def nvml() -> Iterator[NvmlBackend]:
    backend = NvmlBackend(HOST)
    availability = backend.probe()
    if not availability.available:
        pytest.skip(f"NVML unavailable: {availability.reason}")
    yield backend
    backend.close()
