"""Inputs given as rows of a table (`TableRows`): the same outputs as the looked-up inputs, and the table's
gradient equal to the per-position input gradients added by id (NumPy's `add.at`, an independent float64
oracle); the compiled kernels' folded table gradient against the generic code."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import xlstm
from tests.test_kernels import NUMBA_MISSING, NUMBA_REASON, _assert_close
from xlstm_backends import row_threads
from xlstm_backends.numpy_backend import NumpyLibrary
from xlstm.table_rows import TableRows


def _case(seed: int, rows: int, steps: int = 5, batch: int = 4, size: int = 3, units: int = 4):
    rng = np.random.default_rng(seed)
    return {"table": rng.normal(size=(rows, size)), "ids": rng.integers(0, rows, size=(batch, steps)),
            "layers": [rng.normal(size=(4 * units, 1 + size + units)), rng.normal(size=(4 * units, 1 + 2 * units))],
            "d_out": rng.normal(size=(batch, steps, units)), "size": size, "units": units}


def _stack(case: dict, layers: int, backend, dtype: str = "float64") -> xlstm.MultiRNNCell:
    sizes = [case["size"], case["units"]]
    return xlstm.MultiRNNCell([xlstm.LSTMCell(case["units"], sizes[k], weights=case["layers"][k], dtype=dtype,
                                              backend=backend) for k in range(layers)])


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("time_major", [False, True])
def test_table_rows_give_the_lookups_outputs_and_the_ids_summed_gradient(backend, layers, time_major):
    """On every backend: outputs and weight gradients as for table[ids] given directly; the table's gradient
    is the input gradient of every position added to its id's row (a second row read twice or more)."""
    case = _case(seed=layers, rows=6)
    ids, lengths = case["ids"], [5, 2, 0, 4]
    on = lambda a: xlstm.asarray(a, dtype="float64", backend=backend)  # noqa: E731
    order = (lambda a: np.swapaxes(a, 0, 1)) if time_major else (lambda a: a)
    direct = xlstm.dynamic_rnn_vjp(_stack(case, layers, backend), on(order(case["table"][ids])),
                                   sequence_length=lengths, time_major=time_major)
    by_rows = xlstm.dynamic_rnn_vjp(_stack(case, layers, backend), TableRows(on(case["table"]),
                                                                               xlstm.asarray(order(ids), backend=backend)),
                                    sequence_length=lengths, time_major=time_major)
    grads = [run[2](on(order(case["d_out"]))) for run in (direct, by_rows)]
    np.testing.assert_allclose(xlstm.to_numpy(by_rows[0]), xlstm.to_numpy(direct[0]), rtol=1e-12, atol=1e-12)
    for name in grads[0]:
        if name not in ("inputs", "initial_state"):
            np.testing.assert_allclose(xlstm.to_numpy(grads[1][name]), xlstm.to_numpy(grads[0][name]),
                                       rtol=1e-12, atol=1e-12, err_msg=name)
    expected = np.zeros_like(case["table"])
    np.add.at(expected, ids.reshape(-1), np.reshape(order(xlstm.to_numpy(grads[0]["inputs"])), (-1, case["size"])))
    np.testing.assert_allclose(xlstm.to_numpy(grads[1]["inputs"]), expected, rtol=1e-12, atol=1e-12)


@st.composite
def table_cases(draw):
    return (draw(st.integers(0, 2**31)), draw(st.integers(1, 6)), draw(st.integers(1, 7)),
            draw(st.none() | st.just("lengths")), draw(st.sampled_from(["1", "2", "3"])))


@pytest.mark.skipif(NUMBA_MISSING, reason=NUMBA_REASON)
@pytest.mark.parametrize("few_rows", [True, False])
@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 1e-5)])
@settings(max_examples=25, deadline=None)
@given(drawn=table_cases())
def test_compiled_table_gradient_equals_generic_code(few_rows, dtype, tolerance, drawn):
    """The compiled kernels on table rows, the table's gradient folded (a table of one row: the pre-activation
    gradients summed by id per row block) or not (more table rows than positions), 1-3 row blocks, with
    lengths: the generic code's outputs and gradients."""
    from xlstm_backends import numba_kernels

    seed, steps, batch, lengths, threads = drawn
    rows = 1 if few_rows else steps * batch + 1
    case = _case(seed, rows, steps, batch, size=3, units=5)
    lengths = None if lengths is None else np.random.default_rng(seed).integers(0, steps + 1, batch).tolist()
    results, folds = [], []
    decide = numba_kernels._table_folds
    for kernels in (numba_kernels, None):
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setenv(row_threads.THREADS_VARIABLE, threads)
            monkeypatch.setattr(numba_kernels, "MIN_ROWS", 1)
            monkeypatch.setattr(numba_kernels, "MIN_ROW_UNITS", 1)
            monkeypatch.setattr(NumpyLibrary, "lstm_kernels", lambda self, kernels=kernels: kernels)
            monkeypatch.setattr(numba_kernels, "_table_folds", lambda *args: folds.append(decide(*args)) or folds[-1])
            on = lambda a: xlstm.asarray(a, dtype=dtype, backend="numpy")  # noqa: E731
            outputs, _, backward = xlstm.dynamic_rnn_vjp(
                _stack(case, 1, "numpy", dtype), TableRows(on(case["table"]), xlstm.asarray(case["ids"], backend="numpy")),
                sequence_length=lengths)
            results.append({"outputs": outputs, **backward(on(case["d_out"]))})
    assert folds == [few_rows]  # the compiled backward took the table path; the generic run has no kernels
    for name in ("outputs", "inputs", "cell_0/weights"):
        _assert_close(xlstm.to_numpy(results[0][name]), xlstm.to_numpy(results[1][name]), tolerance, name)


@pytest.mark.parametrize("table, ids, error, names", [
    (np.zeros((4, 2)), np.zeros((2, 3), np.int64), ValueError, "inputs.table"),
    (np.zeros((4, 3)), np.zeros((2, 3)), TypeError, "inputs.ids"),
    (np.zeros((4, 3)), np.full((2, 3), 4), ValueError, "inputs.ids"),
    (np.zeros((4, 3)), np.zeros((6,), np.int64), ValueError, "inputs.ids"),
])
def test_bad_table_rows_are_refused_by_name(table, ids, error, names):
    cell = xlstm.LSTMCell(2, 3, dtype="float64", backend="numpy")
    with pytest.raises(error, match=names):
        xlstm.dynamic_rnn(cell, TableRows(xlstm.asarray(table, dtype="float64", backend="numpy"),
                                          xlstm.asarray(ids, backend="numpy")))
