"""Shared fixtures: every numerical test runs once per usable backend.

The parameters are numpy; array_api_strict on its default device and on `device1`
(always: it proves the code uses only the standard and moves devices explicitly);
torch on the CPU when installed; cupy on GPU 0 when `cupy.is_available()`.
`XLSTM_TEST_BACKENDS=numpy,cupy` narrows the set by backend name.
"""
from __future__ import annotations

import os

import pytest

import xlstm_backends as backends

BACKEND_CASES = [
    ("numpy", None, "numpy"),
    ("array_api_strict", None, "strict"),
    ("array_api_strict", "device1", "strict-device1"),
    ("torch", "cpu", "torch"),
    ("cupy", 0, "cupy"),
]


def _selected(name: str) -> bool:
    wanted = os.environ.get("XLSTM_TEST_BACKENDS", "").strip()
    return not wanted or name in {part.strip() for part in wanted.split(",")}


@pytest.fixture(params=[pytest.param(case, id=case[2]) for case in BACKEND_CASES])
def backend(request: pytest.FixtureRequest) -> backends.Backend:
    """A usable Backend; unusable or deselected ones are skipped with the reason."""
    name, device, _ = request.param
    if not _selected(name):
        pytest.skip(f"{name} not in XLSTM_TEST_BACKENDS")
    reason = backends.available_backends()[name]
    if reason is not None:
        pytest.skip(f"backend {name} unavailable: {reason}")
    return backends.get_backend(name, device)
