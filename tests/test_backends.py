"""Backend selection (XLSTM_BACKEND, use_backend), its errors, and explicit transfers."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xlstm_backends as backends
import xlstm

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("XLSTM_")}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=120)


def test_default_backend_is_numpy():
    result = _python("import xlstm; b = xlstm.current_backend(); print(b.name, b.device)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["numpy", "cpu"]


def test_environment_variables_pick_backend_and_device():
    code = ("import xlstm; c = xlstm.LSTMCell(2, 3); print(xlstm.current_backend().name, c.weights.device)")
    result = _python(code, XLSTM_BACKEND="array_api_strict", XLSTM_DEVICE="device1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("array_api_strict") and "device1" in result.stdout


def test_unknown_backend_in_environment_is_a_clear_error():
    result = _python("import xlstm; xlstm.LSTMCell(2, 3)", XLSTM_BACKEND="tensorflow")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "XLSTM_BACKEND='tensorflow'" in last and "unknown backend 'tensorflow'" in last
    assert "usable backends: numpy" in last


def test_cli_reports_bad_backend_without_traceback():
    result = subprocess.run([sys.executable, "-m", "xlstm", "walkthrough"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "XLSTM_BACKEND": "nosuch"}, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "unknown backend 'nosuch'" in result.stderr and "usable backends:" in result.stderr


def test_backends_command_lists_every_backend():
    result = subprocess.run([sys.executable, "-m", "xlstm", "backends"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    for name, reason in backends.available_backends().items():
        line = next(line for line in result.stdout.splitlines() if line.startswith(name + " "))
        assert ("usable" in line) if reason is None else (reason in line)


def test_unusable_backend_names_the_reason():
    unusable = {name: why for name, why in backends.available_backends().items() if why is not None}
    if not unusable:
        pytest.skip("every backend is usable on this machine")
    name, why = next(iter(unusable.items()))
    with pytest.raises(backends.BackendError, match=f"backend '{name}' is not usable: .*usable backends: numpy"):
        xlstm.use_backend(name)
    assert why


def test_bad_device_is_a_clear_error():
    with pytest.raises(backends.BackendError, match="device for backend 'numpy' must be 'cpu', got 'gpu'"):
        xlstm.use_backend("numpy", device="gpu")
    with pytest.raises(backends.BackendError, match="device for backend 'array_api_strict' must be one of"):
        xlstm.asarray([1.0], backend="array_api_strict", device="device9")


def test_use_backend_as_setter_and_context_manager():
    before = xlstm.current_backend()
    with xlstm.use_backend("array_api_strict", device="device1") as chosen:
        assert xlstm.current_backend() is chosen
        cell = xlstm.LSTMCell(2, 3)
        assert "device1" in str(cell.weights.device)
        with xlstm.use_backend("numpy"):
            assert xlstm.current_backend().name == "numpy"
        assert xlstm.current_backend() is chosen
    assert xlstm.current_backend() == before
    try:
        xlstm.use_backend("array_api_strict")
        assert xlstm.current_backend().name == "array_api_strict"
    finally:
        xlstm.use_backend(before)


def test_transfers_round_trip_exactly(backend):
    values = np.random.default_rng(0).normal(size=(3, 4))
    for dtype in ("float64", "float32"):
        moved = xlstm.asarray(values, dtype=dtype, backend=backend)
        assert backends.library_of(moved).name == backend.name
        back = xlstm.to_numpy(moved)
        assert isinstance(back, np.ndarray) and back.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(back, values.astype(dtype))
    # onto every other usable backend and back again, bit for bit
    source = xlstm.asarray(values, backend=backend)
    for name, reason in backends.available_backends().items():
        if reason is None:
            there = xlstm.asarray(source, backend=name)
            np.testing.assert_array_equal(xlstm.to_numpy(xlstm.asarray(there, backend=backend)), values)


def test_asarray_defaults(backend):
    assert str(xlstm.asarray([[1.0, 2.0]], backend=backend).dtype).endswith("float32")
    assert str(xlstm.asarray(np.ones(2), backend=backend).dtype).endswith("float64")
    assert "int" in str(xlstm.asarray([1, 2], backend=backend).dtype)


def test_strict_devices_move_explicitly():
    on_device1 = xlstm.asarray([1.0, 2.0], backend="array_api_strict", device="device1")
    on_default = xlstm.asarray(on_device1, backend="array_api_strict")
    assert "device1" in str(on_device1.device) and "CPU_DEVICE" in str(on_default.device)
    np.testing.assert_array_equal(xlstm.to_numpy(on_default), [1.0, 2.0])


def test_random_streams_are_seeded_and_independent(backend):
    first = xlstm.to_numpy(backend.random(7).normal((4,), backend.xp.float64))
    again = xlstm.to_numpy(backend.random(7).normal((4,), backend.xp.float64))
    other = xlstm.to_numpy(backend.random(7, stream=1).normal((4,), backend.xp.float64))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    backend.synchronize()
