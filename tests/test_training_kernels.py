"""The numpy backend's loss, optimizer and scatter-add kernels against the generic array-API code.

float64 must agree within 1e-12 (Adam bit for bit). float32's compiled softmax uses Cephes'
expf, within 2 units in the last place of the true e^x (tested below) against NumPy's exp,
and sums each row in another order: a row's loss and gradient then differ from the generic
code's by a few float32 rounding steps of the row's largest terms, so float32 is held to
rtol 1e-5, atol 1e-6 (eps32 ≈ 1.2e-7, times ~V/10 for the reordered sums of V ≤ 100 terms).
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xlstm
from xlstm import optim
from xlstm_backends import numpy_backend, numpy_losses
from xlstm_backends.library import Library
from xlstm_backends.numpy_backend import NumpyLibrary

NUMBA_MISSING = any(importlib.util.find_spec(name) is None for name in numpy_backend.FAST_EXTRA)
NUMBA = pytest.param("numba", marks=pytest.mark.skipif(NUMBA_MISSING, reason="numba or scipy is not installed"))
TOLERANCES = {"float64": {"rtol": 0.0, "atol": 1e-12}, "float32": {"rtol": 1e-5, "atol": 1e-6}}


def _loss_kernels(name):
    """The loss kernel module called `name`."""
    if name == "numba":
        from xlstm_backends import numba_training

        return numba_training
    return numpy_losses


def _fused_and_generic(monkeypatch, hook, module, run):
    """(run() with `hook` returning `module`, run() with the generic code)."""
    monkeypatch.setattr(NumpyLibrary, hook, lambda self: module)
    fused = run()
    monkeypatch.setattr(NumpyLibrary, hook, lambda self: None)
    generic = run()
    monkeypatch.undo()
    return fused, generic


@st.composite
def loss_cases(draw):
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=2)))
    classes = draw(st.integers(1, 12))
    weights = draw(st.sampled_from(["none", "random", "zero"]))
    return (shape, classes, weights, draw(st.sampled_from(["none", "sum", "mean"])),
            draw(st.sampled_from([1.0, 30.0, 1e3])), draw(st.sampled_from([None, 0.5, "array"])),
            draw(st.integers(0, 2**31)))


@pytest.mark.parametrize("kernels", ["numpy", NUMBA])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=loss_cases())
def test_softmax_cross_entropy_kernels_match_generic_code(monkeypatch, kernels, dtype, case):
    """Loss and gradient for every reduction, with and without weights (all zero too), logits up
    to ±3000 (the exps underflow to 0 but for the largest), scalar and array cotangents."""
    shape, classes, weighting, reduction, scale, cotangent, seed = case
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=shape + (classes,)) * scale
    labels = rng.integers(0, classes, size=shape)
    weights = {"none": None, "random": rng.random(shape), "zero": np.zeros(shape)}[weighting]
    on = lambda a: None if a is None else xlstm.asarray(a, dtype=dtype, backend="numpy")  # noqa: E731

    def run():
        loss, backward = xlstm.softmax_cross_entropy_vjp(on(logits), xlstm.asarray(labels, backend="numpy"),
                                                         on(weights), reduction=reduction)
        given = on(rng_cotangent(loss)) if cotangent == "array" else cotangent
        return xlstm.to_numpy(loss), xlstm.to_numpy(backward(given))

    def rng_cotangent(loss):
        return np.random.default_rng(seed + 1).normal(size=tuple(loss.shape))

    fused, generic = _fused_and_generic(monkeypatch, "loss_kernels", _loss_kernels(kernels), run)
    for mine, theirs in zip(fused, generic):
        assert mine.dtype == theirs.dtype == np.dtype(dtype) and mine.shape == theirs.shape
        np.testing.assert_allclose(mine, theirs, **TOLERANCES[dtype])


@pytest.mark.parametrize("kernels", ["numpy", NUMBA])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("across_time, across_batch", [(True, True), (False, True), (False, False)])
def test_sequence_loss_kernels_match_generic_code(monkeypatch, kernels, dtype, across_time, across_batch):
    rng = np.random.default_rng(3)
    logits, targets, weights = rng.normal(size=(4, 6, 96)) * 4, rng.integers(0, 96, size=(4, 6)), rng.random((4, 6))
    on = lambda a: xlstm.asarray(a, dtype=dtype, backend="numpy")  # noqa: E731

    def run():
        loss, backward = xlstm.sequence_loss_vjp(on(logits), xlstm.asarray(targets, backend="numpy"), on(weights),
                                                 across_time, across_batch)
        return xlstm.to_numpy(loss), xlstm.to_numpy(backward())

    fused, generic = _fused_and_generic(monkeypatch, "loss_kernels", _loss_kernels(kernels), run)
    for mine, theirs in zip(fused, generic):
        np.testing.assert_allclose(mine, theirs, **TOLERANCES[dtype])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("kernels", ["numpy", NUMBA])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_non_finite_logits_give_what_the_generic_code_gives(monkeypatch, kernels, dtype):
    """A NaN or an infinite logit makes its row's loss NaN on both paths (not a silent number)."""
    logits = np.array([[0.5, np.nan, 1.0], [np.inf, 0.0, 1.0], [-np.inf, 0.0, 1.0], [1.0, 2.0, 3.0]])
    labels = xlstm.asarray([0, 1, 2, 2], backend="numpy")

    def run():
        return xlstm.to_numpy(xlstm.softmax_cross_entropy(xlstm.asarray(logits, dtype=dtype, backend="numpy"),
                                                          labels, reduction="none"))

    fused, generic = _fused_and_generic(monkeypatch, "loss_kernels", _loss_kernels(kernels), run)
    np.testing.assert_array_equal(np.isnan(fused), np.isnan(generic))
    np.testing.assert_allclose(fused[~np.isnan(fused)], generic[~np.isnan(generic)], rtol=1e-6)


@pytest.mark.parametrize("kernels", ["numpy", NUMBA])
def test_bad_input_is_refused_before_the_kernels_run(monkeypatch, kernels):
    monkeypatch.setattr(NumpyLibrary, "loss_kernels", lambda self: _loss_kernels(kernels))
    logits = xlstm.asarray(np.zeros((3, 4)), backend="numpy")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
        xlstm.softmax_cross_entropy(logits, xlstm.asarray([0, 4, 1], backend="numpy"))
    with pytest.raises(TypeError, match="labels must be an integer array"):
        xlstm.softmax_cross_entropy(logits, xlstm.asarray([0.0, 1.0, 1.0], backend="numpy"))


@pytest.mark.skipif(NUMBA_MISSING, reason="numba or scipy is not installed")
def test_float32_exp_is_within_two_ulp():
    """Cephes' expf against float64's exp over the whole range the softmax uses, [-87, 0], and
    beyond it up to 88; below -87 it is clamped to e^-87 ≈ 1.6e-38 (≤ that absolute error)."""
    import numba

    from xlstm_backends.numba_training import exp

    compiled = numba.njit(lambda x: [exp(v) for v in x])
    x = np.concatenate([np.linspace(-87.0, 88.0, 400_001), [0.0, -1e-30, 1e-30, -0.5, 0.5]]).astype(np.float32)
    approximate, exact = np.array(compiled(x)), np.exp(x.astype(np.float64))
    assert np.max(np.abs(approximate - exact) / np.spacing(exact.astype(np.float32))) <= 2.0
    assert compiled(np.array([0.0], np.float32))[0] == 1.0
    assert 0.0 < compiled(np.array([-200.0], np.float32))[0] <= 1.7e-38
    assert compiled(np.array([0.5]))[0] == np.exp(0.5)  # float64: math.exp itself


OPTIMIZERS = [(optim.Adam, {"learning_rate": 5e-3}), (optim.Adam, {"beta1": 0.0, "epsilon": 1e-3}),
              (optim.AdamW, {"learning_rate": 1e-2, "weight_decay": 0.1}), (optim.AdamW, {"weight_decay": 0.0})]


@pytest.mark.skipif(NUMBA_MISSING, reason="numba or scipy is not installed")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind, hyperparameters", OPTIMIZERS)
def test_compiled_adam_is_bit_for_bit_the_generic_update(monkeypatch, dtype, kind, hyperparameters):
    """Several steps over parameters of three shapes, then state_dict → load_state_dict into a new
    optimiser that continues: every parameter and buffer equal to the generic code's, bit for bit."""
    from xlstm_backends import numba_training

    rng = np.random.default_rng(5)
    shapes = {"weights": (8, 13), "kernel": (5, 3), "bias": (3,)}
    params = {name: rng.normal(size=shape) for name, shape in shapes.items()}
    grads = [{name: rng.normal(size=shape) * 10.0 ** rng.integers(-6, 2) for name, shape in shapes.items()}
             for _ in range(5)]
    on = lambda arrays: {k: xlstm.asarray(v, dtype=dtype, backend="numpy") for k, v in arrays.items()}  # noqa: E731

    def run():
        optimizer, current = kind(**hyperparameters), on(params)
        for step_grads in grads[:3]:
            current = optimizer.step(current, on(step_grads))
        resumed = kind()
        resumed.load_state_dict(optimizer.state_dict())
        for step_grads in grads[3:]:
            current = resumed.step(current, on(step_grads))
        state = resumed.state_dict()["state"]
        return [xlstm.to_numpy(current[k]) for k in shapes] + [
            xlstm.to_numpy(state[k][buffer]) for k in shapes for buffer in ("exp_avg", "exp_avg_sq")]

    fused, generic = _fused_and_generic(monkeypatch, "optimizer_kernels", numba_training, run)
    for mine, theirs in zip(fused, generic):
        assert mine.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize("kernels", ["numpy", NUMBA])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rows, ids, id_dtype", [(96, 2048, "int64"), (96, 2048, "uint16"), (7, 1, "int32"),
                                                 (5, 0, "int64"), (1, 9, "uint8")])
def test_scatter_add_rows_matches_the_one_hot_product(monkeypatch, kernels, dtype, rows, ids, id_dtype):
    """Each kernel path's embedding gradient, for ids of any integer dtype (the token cache keeps the
    smallest that fits), against Library's generic one-hot product. The
    product sums each row's ~N/rows terms (|x| ≲ 4) in BLAS's order: float32 within
    21 · 4 · 6e-8 ≈ 5e-6 at N = 2048, rows = 96."""
    monkeypatch.setenv(numpy_backend.KERNELS_VARIABLE, kernels)
    rng = np.random.default_rng(rows + ids)
    token_ids, values = rng.integers(0, rows, size=ids).astype(id_dtype), rng.normal(size=(ids, 32)).astype(dtype)
    mine = NumpyLibrary().scatter_add_rows(rows, token_ids, values)
    generic = Library.scatter_add_rows(NumpyLibrary(), rows, xlstm.asarray(token_ids, backend="numpy"),
                                       xlstm.asarray(values, backend="numpy"))
    assert mine.dtype == np.dtype(dtype) and mine.shape == (rows, 32)
    np.testing.assert_allclose(mine, xlstm.to_numpy(generic), atol=1e-12 if dtype == "float64" else 1e-5)


@pytest.mark.skipif(NUMBA_MISSING, reason="numba or scipy is not installed")
def test_compiled_scatter_add_refuses_ids_out_of_range():
    from xlstm_backends import numba_training

    with pytest.raises(IndexError, match="outside"):
        numba_training.scatter_add_rows(3, np.array([0, 3]), np.ones((2, 4)))


@pytest.mark.parametrize("kernels, loss, optimizer", [
    ("numpy", "NumPy kernels (in-place ufuncs)", "optimizers: the generic array-API code"),
    pytest.param("numba", "softmax cross-entropy: compiled", "optimizers: compiled",
                 marks=pytest.mark.skipif(NUMBA_MISSING, reason="numba or scipy is not installed"))])
def test_backends_command_names_the_loss_and_optimizer_paths(monkeypatch, kernels, loss, optimizer):
    monkeypatch.setenv(numpy_backend.KERNELS_VARIABLE, kernels)
    description = NumpyLibrary().description
    assert loss in description and optimizer in description
