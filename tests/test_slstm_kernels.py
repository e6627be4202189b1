"""The sLSTM's compiled kernels (backends/numba_slstm.py) against the generic array-API code they replace."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import xlstm
from xlstm_backends.numpy_backend import NumpyLibrary
from test_kernels import NUMBA_MISSING, NUMBA_REASON, _assert_close
from test_slstm import random_cell_arrays, random_state

pytestmark = pytest.mark.skipif(NUMBA_MISSING, reason=NUMBA_REASON)


@st.composite
def cases(draw):
    """(B, T, I, DH, NH, lengths, time-major, state: "zero" / "random" / "half-zero", input-gate shift, seed)."""
    B, T = draw(st.integers(1, 5)), draw(st.integers(0, 6))
    lengths = draw(st.none() | st.lists(st.integers(0, T), min_size=B, max_size=B))
    return (B, T, draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 4)), lengths,
            draw(st.booleans()), draw(st.sampled_from(["zero", "random", "half-zero"])),
            draw(st.sampled_from([0.0, 30.0, 100.0])), draw(st.integers(0, 2**31)))


def _run_both(case, dtype):
    """(fused, generic) results of dynamic_rnn and dynamic_rnn_vjp on the numpy backend for one random case."""
    B, T, I, DH, NH, lengths, time_major, start, shift, seed = case
    H = DH * NH
    rng = np.random.default_rng(seed)
    arrays = random_cell_arrays(rng, H, I, NH)
    arrays["weights"][:H, 0] += shift  # large input gates: exp(ĩ) overflows float32 from ~88 on
    inputs = rng.normal(size=(T, B, I) if time_major else (B, T, I))
    state = random_state(rng, B, H)
    if start == "zero":  # the first-step rule m_1 = ĩ everywhere
        state = xlstm.SLSTMState(*(np.zeros((B, H)) for _ in range(4)))
    elif start == "half-zero":  # ... in some rows only
        state = xlstm.SLSTMState(*(part * (np.arange(B) % 2)[:, None] for part in state))
    d_out = rng.normal(size=inputs.shape[:2] + (H,))
    d_final = [rng.normal(size=(B, H)) for _ in range(4)]
    on = lambda a: xlstm.asarray(a, dtype=dtype, backend="numpy")  # noqa: E731

    def run():
        cell = xlstm.SLSTMCell(H, I, num_heads=NH, **arrays, dtype=dtype, backend="numpy")
        initial = xlstm.SLSTMState(*(on(part) for part in state))
        inference, _ = xlstm.dynamic_rnn(cell, on(inputs), initial, sequence_length=lengths, time_major=time_major)
        outputs, final, backward = xlstm.dynamic_rnn_vjp(cell, on(inputs), initial, sequence_length=lengths,
                                                         time_major=time_major)
        grads = backward(on(d_out), xlstm.SLSTMState(*(on(d) for d in d_final)))
        return {"inference": inference, "outputs": outputs, **{f"final {k}": v for k, v in final._asdict().items()},
                "weights": grads["weights"], "recurrent_weights": grads["recurrent_weights"],
                "inputs": grads["inputs"],
                **{f"initial {k}": v for k, v in grads["initial_state"]._asdict().items()}}

    fused = run()
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(NumpyLibrary, "slstm_kernels", lambda self: None)
        generic = run()
    return fused, generic


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 2e-5)])
@settings(max_examples=40, deadline=None)
@given(case=cases())
def test_fused_kernels_equal_the_generic_code(dtype, tolerance, case):
    """Outputs, final states and every gradient, over shapes, heads, lengths, zero and random states and large
    input gates. float32: the kernels' tanh is a rational approximation (a few units in the last place) and
    their sums run in another order; over ≤ 6 steps that stays below 2e-5 of the largest entry."""
    fused, generic = _run_both(case, dtype)
    for name in generic:
        assert fused[name].dtype == generic[name].dtype, name
        assert fused[name].shape == generic[name].shape, name
        _assert_close(fused[name], generic[name], tolerance, name)


def test_the_cell_runs_the_kernels_with_lengths_too(monkeypatch):
    """SLSTMCell.unroll takes the fused path on numpy for every case, sequence_length included (else the
    comparison above would compare the generic code with itself)."""
    kernels = NumpyLibrary().slstm_kernels()
    calls = []
    for name in ("slstm_forward", "slstm_backward"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *args, _real=real, _name=name: calls.append(_name) or _real(*args))
    cell = xlstm.SLSTMCell(4, 3, num_heads=2, seed=0, backend="numpy")
    inputs = xlstm.asarray(np.ones((2, 5, 3)), dtype="float32", backend="numpy")
    outputs, _, backward = xlstm.dynamic_rnn_vjp(cell, inputs, sequence_length=[5, 2])
    backward(outputs, None)
    assert calls == ["slstm_forward", "slstm_backward"]


def test_backends_listing_names_the_slstm_kernels():
    """`python -m xlstm backends` and bench print which code runs the sLSTM, as for the other parts."""
    assert NumpyLibrary().kernel_paths()["sLSTM"].startswith("compiled kernels (numba")


def test_without_the_fast_choice_the_generic_code_runs(monkeypatch):
    """XLSTM_KERNELS=numpy: no fused sLSTM (there is no NumPy-only one), so the generic code runs."""
    monkeypatch.setenv("XLSTM_KERNELS", "numpy")
    assert NumpyLibrary().slstm_kernels() is None
