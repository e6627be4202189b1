"""The CuPy fused kernels (`backends/cupy_kernels.py`) against the generic array-API code.

Everything here needs a CUDA GPU and is skipped, with the reason, where CuPy finds none.
"""
from __future__ import annotations

import collections

import numpy as np
import pytest
from hypothesis import given, settings
from test_kernels import cases

import xlstm
from xlstm_backends import available_backends
from xlstm_backends.cupy_backend import CupyLibrary

UNAVAILABLE = available_backends()["cupy"]
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"cupy unavailable: {UNAVAILABLE}")


def _on_gpu(array, dtype):
    return xlstm.asarray(array, dtype=dtype, backend="cupy")


def _vjp_and_inference(case, dtype) -> dict[str, np.ndarray]:
    """Outputs, final states and every gradient of one random case on the cupy backend, on the host."""
    B, T, I, H, lengths, keep, time_major, seed = case
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(4 * H, 1 + I + H))
    inputs = rng.normal(size=(T, B, I) if time_major else (B, T, I))
    c0, h0, d_c, d_h = (rng.normal(size=(B, H)) for _ in range(4))
    d_outputs = rng.normal(size=inputs.shape[:2] + (H,))

    def unroll(run):
        cell = xlstm.LSTMCell(H, I, weights=weights, forget_bias=0.7, dropout_keep_prob=keep, seed=seed,
                              dtype=dtype, backend="cupy")
        state = xlstm.LSTMState(_on_gpu(c0, dtype), _on_gpu(h0, dtype))
        return run(cell, _on_gpu(inputs, dtype), state, sequence_length=lengths, time_major=time_major)

    outputs, final, backward = unroll(xlstm.dynamic_rnn_vjp)
    grads = backward(_on_gpu(d_outputs, dtype), xlstm.LSTMState(_on_gpu(d_c, dtype), _on_gpu(d_h, dtype)))
    inference, inference_final = unroll(xlstm.dynamic_rnn)
    found = {"outputs": outputs, "c": final.c, "h": final.h, "inference": inference,
             "inference c": inference_final.c, "inference h": inference_final.h, "d weights": grads["weights"],
             "d inputs": grads["inputs"], "d c0": grads["initial_state"].c, "d h0": grads["initial_state"].h}
    return {name: xlstm.to_numpy(value) for name, value in found.items()}


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 1e-5)])
@settings(max_examples=30, deadline=None)
@given(case=cases())
def test_cupy_kernels_equal_generic_code(dtype, tolerance, case):
    fused = _vjp_and_inference(case, dtype)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(CupyLibrary, "lstm_kernels", lambda self: None)
        generic = _vjp_and_inference(case, dtype)
    for name, value in fused.items():
        assert value.dtype == generic[name].dtype, name
        np.testing.assert_allclose(value, generic[name], atol=tolerance, rtol=tolerance, err_msg=name)


def test_cupy_kernels_are_used_and_skipped_under_layer_norm(monkeypatch):
    from xlstm_backends import cupy_kernels

    calls = []
    original = cupy_kernels.lstm_forward
    monkeypatch.setattr(cupy_kernels, "lstm_forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = _on_gpu(np.ones((2, 3, 4)), "float32")
    xlstm.dynamic_rnn(xlstm.LSTMCell(5, 4, backend="cupy"), x)
    xlstm.dynamic_rnn(xlstm.LSTMCell(5, 4, layer_norm=True, backend="cupy"), x)
    assert calls == [1]


def test_cupy_kernels_never_write_into_the_callers_arrays():
    """B = H = 1 makes every [B, H] state contiguous either way round: the kernels must copy it."""
    c0, h0, d_c, d_h = (_on_gpu([[value]], "float64") for value in (0.5, 0.5, 1.0, 1.0))
    cell = xlstm.LSTMCell(1, 1, seed=0, dtype="float64", backend="cupy")
    _, _, backward = xlstm.dynamic_rnn_vjp(cell, _on_gpu(np.ones((1, 3, 1)), "float64"), xlstm.LSTMState(c0, h0))
    backward(None, xlstm.LSTMState(d_c, d_h))
    assert [xlstm.to_numpy(a).tolist() for a in (c0, h0, d_c, d_h)] == [[[0.5]], [[0.5]], [[1.0]], [[1.0]]]


@pytest.mark.parametrize("masked, lengths", [(False, None), (True, [20, 3, 0])])
def test_graph_replays_equal_the_plain_loop(monkeypatch, masked, lengths):
    """Inference calls of one shape: plain loop, then warm-up and capture, then graph replays.

    Every call gets fresh numbers (a replay must read the new inputs, not the captured ones),
    and each result must survive the later calls (the graph's buffers are reused).
    """
    import cupy

    from xlstm_backends import cupy_kernels, numpy_kernels

    if cupy.cuda.runtime.is_hip:
        pytest.skip("CuPy does not capture CUDA graphs on HIP")
    monkeypatch.setattr(cupy_kernels, "_graphs", collections.OrderedDict())
    rng = np.random.default_rng(7)
    B, I, H = 3, 4, 5
    T = cupy_kernels.GRAPH_MIN_STEPS + 4
    calls = []
    for _ in range(4):
        host = [rng.normal(size=(T, B, I)), rng.normal(size=(4 * H, 1 + I + H)), rng.normal(size=(B, H)),
                rng.normal(size=(B, H)), 0.7, (rng.random((T, B, H)) < 0.6) / 0.6 if masked else None,
                None if lengths is None else (np.arange(T)[:, None] < np.array(lengths)[None, :])[:, :, None]]
        device = [a if a is None or isinstance(a, float) else cupy.asarray(a) for a in host]
        copies = [a.copy() for a in device[:4]]
        calls.append((host, device, cupy_kernels.lstm_forward(*device)))
        for array, copy in zip(device[:4], copies):
            assert bool((array == copy).all()), "the caller's array was written"
    entry = cupy_kernels._graphs[next(iter(cupy_kernels._graphs))]
    assert isinstance(entry, cupy_kernels._GraphedLoop) and entry.graph is not None
    monkeypatch.setattr(cupy_kernels, "GRAPH_MIN_STEPS", 10**9)
    for host, device, replayed in calls:
        plain = cupy_kernels.lstm_forward(*device)
        on_cpu = numpy_kernels.lstm_forward(*host)
        assert replayed[3] is None
        for got, want, cpu in zip(replayed[:3], plain[:3], on_cpu[:3]):
            np.testing.assert_allclose(cupy.asnumpy(got), cupy.asnumpy(want), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(cupy.asnumpy(got), cpu, rtol=1e-12, atol=1e-12)
