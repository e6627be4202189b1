"""The backends' fused LSTM kernels against the generic array-API code they replace."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import importlib.util

import xlstm
from xlstm_backends import numpy_backend, numpy_kernels, row_threads
from xlstm_backends.numpy_backend import NumpyLibrary

NUMBA_MISSING = any(importlib.util.find_spec(name) is None for name in numpy_backend.FAST_EXTRA)
NUMBA_REASON = "numba or scipy is not installed (the optional 'fast' extra)"
KERNELS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(NUMBA_MISSING, reason=NUMBA_REASON))]


def _kernels(name):
    """The kernel module called `name`."""
    if name == "numba":
        from xlstm_backends import numba_kernels

        return numba_kernels
    return numpy_kernels


def _run_both(monkeypatch, case, dtype, kernels="numpy"):
    """(fused, generic) results of dynamic_rnn_vjp on the numpy backend for one random case."""
    B, T, I, H, lengths, keep, time_major, seed = case
    rng = np.random.default_rng(seed)
    weights, inputs = rng.normal(size=(4 * H, 1 + I + H)), rng.normal(size=(T, B, I) if time_major else (B, T, I))
    c0, h0, d_out = rng.normal(size=(B, H)), rng.normal(size=(B, H)), rng.normal(size=inputs.shape[:2] + (H,))
    d_c, d_h = rng.normal(size=(B, H)), rng.normal(size=(B, H))
    on = lambda a: xlstm.asarray(a, dtype=dtype, backend="numpy")  # noqa: E731

    def run():
        cell = xlstm.LSTMCell(H, I, weights=weights, forget_bias=0.7, dropout_keep_prob=keep, seed=seed,
                              dtype=dtype, backend="numpy")
        outputs, final, backward = xlstm.dynamic_rnn_vjp(cell, on(inputs), xlstm.LSTMState(on(c0), on(h0)),
                                                         sequence_length=lengths, time_major=time_major)
        inference, _ = xlstm.dynamic_rnn(
            xlstm.LSTMCell(H, I, weights=weights, forget_bias=0.7, dropout_keep_prob=keep, seed=seed, dtype=dtype,
                           backend="numpy"), on(inputs), xlstm.LSTMState(on(c0), on(h0)),
            sequence_length=lengths, time_major=time_major)
        grads = backward(on(d_out), xlstm.LSTMState(on(d_c), on(d_h)))
        return {"outputs": outputs, "inference": inference, "c": final.c, "h": final.h, "weights": grads["weights"],
                "inputs": grads["inputs"], "c0": grads["initial_state"].c, "h0": grads["initial_state"].h}

    monkeypatch.setattr(NumpyLibrary, "lstm_kernels", lambda self: _kernels(kernels))
    fused = run()
    monkeypatch.setattr(NumpyLibrary, "lstm_kernels", lambda self: None)
    generic = run()
    monkeypatch.undo()
    return fused, generic


def _assert_close(fused, generic, tolerance, name):
    """Within `tolerance`, relative, and absolute on the scale of the array's largest value: a
    gradient sums terms of that size, so an entry that cancels to near zero keeps their rounding
    (float32: one draw of 5 steps left 1.3e-5 in an h0 gradient whose largest entry is 3)."""
    scale = max(1.0, float(np.max(np.abs(generic), initial=0.0)))
    np.testing.assert_allclose(fused, generic, atol=tolerance * scale, rtol=tolerance, err_msg=name)


@st.composite
def cases(draw, batch=st.integers(1, 5)):
    B, T = draw(batch), draw(st.integers(0, 6))
    lengths = draw(st.none() | st.lists(st.integers(0, T), min_size=B, max_size=B))
    return (B, T, draw(st.integers(1, 5)), draw(st.integers(1, 6)), lengths, draw(st.sampled_from([1.0, 0.6])),
            draw(st.booleans()), draw(st.integers(0, 2**31)))


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 1e-5)])
@settings(max_examples=40, deadline=None)
@given(case=cases())
def test_fused_kernels_equal_generic_code(kernels, dtype, tolerance, case):
    """Both kernel paths against the generic code; float32 numba runs an approximate tanh
    (a few units in the last place), float64 the exact one."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        fused, generic = _run_both(monkeypatch, case, dtype, kernels)
    for name in fused:
        assert fused[name].dtype == generic[name].dtype, name
        _assert_close(fused[name], generic[name], tolerance, name)


@pytest.mark.parametrize("threads", ["2", "3"])
@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 1e-5)])
@settings(max_examples=25, deadline=None)
@given(case=cases(batch=st.integers(2, 7)))
def test_numpy_kernels_on_row_blocks_equal_generic_code(threads, dtype, tolerance, case):
    """The batch cut into 2-3 row blocks of uneven sizes, each block's loop on its own thread."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(row_threads.THREADS_VARIABLE, threads)
        monkeypatch.setattr(numpy_kernels, "MIN_BLOCK_CELLS", 1)
        fused, generic = _run_both(monkeypatch, case, dtype)
    for name in fused:
        _assert_close(fused[name], generic[name], tolerance, name)


def force_chunked_products(monkeypatch) -> None:
    """Every per-step product of the NumPy kernels in row chunks, whatever its size: the largest proper divisor of its
    rows (one-row chunks where the rows are prime), so that even the tests' small shapes take the chunked path."""
    monkeypatch.setattr(numpy_kernels, "SMALL_PRODUCT", 0)
    monkeypatch.setattr(numpy_kernels, "chunk_rows", lambda rows, *_: max(d for d in range(1, rows) if rows % d == 0)
                        if rows > 1 else 1)


@pytest.mark.parametrize("chunked", [True, False])
@pytest.mark.parametrize("fuses", [True, False])
@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 1e-5)])
@settings(max_examples=20, deadline=None)
@given(case=cases(batch=st.integers(1, 7)))
def test_numpy_kernels_with_each_kind_of_step_product_equal_generic_code(chunked, fuses, threads, dtype, tolerance,
                                                                         case):
    """Every way the NumPy loops form a step's products, whatever the sizes would choose: the forward's
    [1, x_t, h_{t-1}]·Wᵀ whole (without lengths) or W_h·h_{t-1} plus a projection of all steps; each, and the
    backward's W_hᵀ·d_gates, in one matmul or in row chunks (what `chunk_rows` picks where OpenBLAS's small-matrix
    kernels win); on one row block and on two."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(row_threads.THREADS_VARIABLE, threads)
        monkeypatch.setattr(numpy_kernels, "MIN_BLOCK_CELLS", 1)
        if chunked:
            force_chunked_products(monkeypatch)
        monkeypatch.setattr(numpy_kernels, "fuses", lambda weights, batch: fuses)
        fused, generic = _run_both(monkeypatch, case, dtype)
    for name in fused:
        _assert_close(fused[name], generic[name], tolerance, name)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rows, depth, batch, chunk", [(20, 5, 3, 20), (20, 5, 3, 5), (20, 5, 3, 1), (12, 7, 1, 4),
                                                       (256, 64, 16, 32)])
def test_step_product_in_row_chunks_equals_one_matmul(dtype, rows, depth, batch, chunk):
    """_chunked_product(W, chunk)(x, out) writes W·x into `out`, chunked or whole; an out it could only reshape by
    copying (so that the product would be lost) is refused."""
    rng = np.random.default_rng(rows + chunk)
    weights, x = rng.normal(size=(rows, depth)).astype(dtype), rng.normal(size=(depth, batch)).astype(dtype)
    out = np.full((rows, batch), np.nan, dtype)
    numpy_kernels._chunked_product(weights, chunk)(x, out)
    np.testing.assert_allclose(out, weights @ x, rtol=1e-12 if dtype == "float64" else 1e-5, atol=1e-12)
    if chunk < rows:
        with pytest.raises(ValueError, match="out must be C-contiguous"):
            numpy_kernels._chunked_product(weights, chunk)(x, np.empty((rows, 2 * batch), dtype)[:, ::2])


def test_chunk_rows_measures_only_where_a_chunk_falls_under_the_small_kernels_limit(monkeypatch):
    """No chunk of CHUNK_ROWS divides 20 rows: one call, nothing measured; at the medium bench shape's per-step product
    128-, 64- and 32-row chunks qualify, and the measurement picks one of them or one call, once per shape (cached).
    The forward fuses the input projection into the step's product exactly where that product runs unpacked."""
    numpy_kernels._measured_chunk_rows.cache_clear()
    assert numpy_kernels.chunk_rows(20, 5, 3, "<f8", (1,)) == 20
    chosen = numpy_kernels.chunk_rows(1024, 256, 16, "<f4", (1,))
    assert chosen in (1024, 128, 64, 32)
    assert numpy_kernels.chunk_rows(1024, 256, 16, "<f4", (1,)) == chosen
    assert numpy_kernels._measured_chunk_rows.cache_info().hits == 1
    out = np.empty((20, 3))
    numpy_kernels.step_product(np.ones((20, 5)), 3)(np.ones((5, 3)), out)  # small: one matmul, no measuring
    np.testing.assert_array_equal(out, 5.0)
    assert numpy_kernels.fuses(np.ones((20, 5)), 3)  # one small call: the projection rides in it
    monkeypatch.setattr(numpy_kernels, "chunk_rows", lambda rows, *_: rows)
    assert not numpy_kernels.fuses(np.ones((1024, 385)), 16)  # a packed call a step: the projection stays apart
    monkeypatch.setattr(numpy_kernels, "chunk_rows", lambda rows, *_: 128)
    assert numpy_kernels.fuses(np.ones((1024, 385)), 16)


@pytest.mark.skipif(NUMBA_MISSING, reason=NUMBA_REASON)
@pytest.mark.parametrize("threads", ["2", "3"])
@pytest.mark.parametrize("fuses", [True, False])
@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 1e-5)])
@settings(max_examples=25, deadline=None)
@given(case=cases(batch=st.integers(2, 7)))
def test_compiled_kernels_split_over_row_blocks_equal_generic_code(threads, fuses, dtype, tolerance, case):
    """The batch cut into 2 or 3 blocks of unequal sizes, each block's time loop on its own thread (the forward's
    step product with the input projection in it or apart), with lengths and dropout: the same numbers as the
    generic code."""
    from xlstm_backends import numba_kernels

    blocks_seen = []
    split = numba_kernels.run_on_row_blocks
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(row_threads.THREADS_VARIABLE, threads)
        monkeypatch.setattr(numba_kernels, "MIN_ROWS", 1)
        monkeypatch.setattr(numba_kernels, "MIN_ROW_UNITS", 1)
        monkeypatch.setattr(numba_kernels, "_fuses", lambda weights, blocks: fuses)
        monkeypatch.setattr(numba_kernels, "run_on_row_blocks",
                            lambda work, blocks: blocks_seen.append(len(blocks)) or split(work, blocks))
        fused, generic = _run_both(monkeypatch, case, dtype, "numba")
    assert blocks_seen and min(blocks_seen) == min(int(threads), case[0])
    for name in fused:
        _assert_close(fused[name], generic[name], tolerance, name)


@pytest.mark.skipif(NUMBA_MISSING, reason=NUMBA_REASON)
@pytest.mark.parametrize("fuses, hand_limit", [(True, None), (False, None), (False, -1)])
@settings(max_examples=25, deadline=None)
@given(case=cases(batch=st.integers(1, 7)))
def test_compiled_loops_with_each_kind_of_product_equal_generic_code(fuses, hand_limit, case):
    """Every way the loops form a step's product, whatever the sizes would choose: the forward's whole
    [1, x_t, h_{t-1}]·Wᵀ (also for blocks smaller than a row tile), or an input projection first and the
    recurrent term by `_product` or by OpenBLAS (W_h too big for `_product`): float64 within 1e-12 of the generic
    code."""
    from xlstm_backends import numba_kernels

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(numba_kernels, "_fuses", lambda weights, blocks: fuses)
        if hand_limit is not None:
            monkeypatch.setattr(numba_kernels, "HAND_PRODUCT_MAX_BYTES", hand_limit)
        fused, generic = _run_both(monkeypatch, case, "float64", "numba")
    for name in fused:
        np.testing.assert_allclose(fused[name], generic[name], atol=1e-12, rtol=1e-12, err_msg=name)


@pytest.mark.skipif(NUMBA_MISSING, reason=NUMBA_REASON)
@pytest.mark.parametrize("units", [8, 16])
@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("lengths, keep", [(None, 1.0), ([3, 0, 2, 3, 1, 3, 3, 2, 3, 1], 0.6)])
def test_compiled_loops_with_whole_product_tiles_equal_generic_code(units, dtype, tolerance, lengths, keep):
    """Shapes whose per-step products fill `_product`'s vector tiles (4H or H a multiple of the tile's
    columns, 10 rows: one 8-row tile and two single rows), with and without lengths and dropout."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        fused, generic = _run_both(monkeypatch, (10, 3, 3, units, lengths, keep, True, 7), dtype, "numba")
    for name in fused:
        np.testing.assert_allclose(fused[name], generic[name], atol=tolerance, rtol=tolerance, err_msg=name)


@pytest.mark.skipif(NUMBA_MISSING, reason=NUMBA_REASON)
@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("case", [(3, 5, 4, 37, [5, 2, 0], 0.6, False, 1), (9, 4, 3, 16, None, 1.0, True, 2),
                                  (2, 3, 2, 64, [1, 3], 1.0, False, 3)])
def test_compiled_kernels_on_whole_vectors_equal_generic_code(dtype, tolerance, case):
    """H of 16 and more, so the forward step's float32 units run in `_cell_vectors` (whole vectors, then the rest
    in the scalar loop), with lengths and dropout: the generic code's numbers."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        fused, generic = _run_both(monkeypatch, case, dtype, "numba")
    for name in fused:
        _assert_close(fused[name], generic[name], tolerance, name)


@pytest.mark.skipif(NUMBA_MISSING, reason=NUMBA_REASON)
@pytest.mark.parametrize("bits", [512, 256])
@pytest.mark.parametrize("units", [1, 8, 16, 37, 64])
def test_cell_vectors_equal_the_step_in_float64(monkeypatch, bits, units):
    """`_cell_vectors` (freshly compiled for 512- or 256-bit vectors) on one float32 row, over pre-activations
    from -20 to 20 (past tanh's clamp), against the step in float64: within 4e-7 (a few float32 ulp of values
    up to 1; the rational tanh is within 2 ulp, σ and the state add a rounding or two). It does the whole
    vectors only and says how many units that was; float64 rows it leaves alone."""
    import numba

    from xlstm_backends import numba_kernels

    monkeypatch.setattr(numba_kernels, "VECTOR_BITS", bits)
    step = numba.njit(lambda *arrays: numba_kernels._cell_vectors(*arrays))
    rng = np.random.default_rng(units)
    a, mask = rng.uniform(-20, 20, 4 * units).astype(np.float32), (rng.random(units) < 0.7).astype(np.float32)
    c = rng.uniform(-3, 3, units).astype(np.float32)
    act, tanh_c, h, out = (np.full(n, np.nan, np.float32) for n in (4 * units, units, units, units))
    c_new = c.copy()
    done = step(a, act, mask, c_new, tanh_c, h, out)
    assert done == units // (bits // 32) * (bits // 32)
    wide = a.astype(np.float64).reshape(4, units)
    sigmoid = 1 / (1 + np.exp(-wide))
    expected_act = np.stack([sigmoid[0], sigmoid[1], np.tanh(wide[2]), sigmoid[3]])
    expected_c = expected_act[0] * c + expected_act[1] * expected_act[2] * mask
    expected_h = expected_act[3] * np.tanh(expected_c)
    for got, expected in ((act.reshape(4, units), expected_act), (c_new, expected_c), (tanh_c, np.tanh(expected_c)),
                          (h, expected_h), (out, expected_h)):
        np.testing.assert_allclose(got[..., :done], expected[..., :done], rtol=4e-7, atol=4e-7)
        assert np.isnan(got[..., done:]).all() or got is c_new
    np.testing.assert_array_equal(c_new[done:], c[done:])
    assert step(*(array.astype(np.float64) for array in (a, act, mask, c, tanh_c, h, out))) == 0


@pytest.mark.skipif(NUMBA_MISSING, reason=NUMBA_REASON)
@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 1e-5)])
@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 19), depth=st.integers(1, 40), width=st.integers(1, 70), seed=st.integers(0, 2**31))
def test_hand_written_product_equals_numpy_dot(dtype, tolerance, rows, depth, width, seed):
    """`_product` (tiles of 8 rows by two vectors, one-row tiles, the plain loop for the columns past
    the last tile) against numpy.dot, from one row or column up, sizes not multiples of the tile."""
    from xlstm_backends import numba_kernels

    rng = np.random.default_rng(seed)
    x, w = rng.normal(size=(rows, depth)).astype(dtype), rng.normal(size=(depth, width)).astype(dtype)
    out = np.full((rows, width), np.nan, dtype)
    numba_kernels._product(x, *numba_kernels.packed_columns(w), out)
    np.testing.assert_allclose(out, np.dot(x.astype(np.float64), w.astype(np.float64)),
                               atol=tolerance * depth, rtol=tolerance)
    assert out.dtype == dtype


@pytest.mark.skipif(NUMBA_MISSING, reason=NUMBA_REASON)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_hand_written_product_on_256_bit_vectors_equals_numpy_dot(monkeypatch, dtype):
    """CPUs without AVX-512 build `_product`'s tiles from 256-bit vectors: the same source compiled
    that way here (a fresh, uncached compilation with VECTOR_BITS = 256), against numpy.dot."""
    import numba

    from xlstm_backends import numba_kernels

    monkeypatch.setattr(numba_kernels, "VECTOR_BITS", 256)
    monkeypatch.setattr(numba_kernels, "_tile_rows", numba_kernels._tile_of(numba_kernels.TILE_ROWS))
    monkeypatch.setattr(numba_kernels, "_tile_row", numba_kernels._tile_of(1))
    product = numba.njit(error_model="numpy")(numba_kernels._product.py_func)
    rng = np.random.default_rng(3)
    for rows, depth, width in [(19, 40, 70), (8, 7, 16), (1, 1, 1), (9, 192, 768)]:
        x, w = rng.normal(size=(rows, depth)).astype(dtype), rng.normal(size=(depth, width)).astype(dtype)
        packed = numba_kernels.packed_columns(w)
        assert packed.chunks.shape[2] == 2 * 256 // (8 * x.itemsize)  # two 256-bit vectors of columns a chunk
        out = np.full((rows, width), np.nan, dtype)
        product(x, *packed, out)
        np.testing.assert_allclose(out, np.dot(x.astype(np.float64), w.astype(np.float64)),
                                   atol=(1e-12 if dtype == "float64" else 1e-5) * depth, rtol=1e-5)


def test_numpy_kernels_cut_the_batch_into_row_blocks_of_min_block_cells(monkeypatch):
    """Blocks of at least MIN_BLOCK_CELLS rows × units, at most XLSTM_THREADS of them; a batch too
    small stays whole."""
    rng = np.random.default_rng(0)
    weights, c0 = rng.normal(size=(8, 6)), np.zeros((7, 2))
    monkeypatch.setenv(row_threads.THREADS_VARIABLE, "3")
    monkeypatch.setattr(numpy_kernels, "MIN_BLOCK_CELLS", 3)  # 2 rows of 2 units
    *_, cache = numpy_kernels.lstm_forward(rng.normal(size=(4, 7, 3)), weights, c0, c0, 1.0, keep_for_backward=True)
    assert cache.blocks == [(0, 2), (2, 4), (4, 7)]
    *_, cache = numpy_kernels.lstm_forward(rng.normal(size=(4, 3, 3)), weights, c0[:3], c0[:3], 1.0,
                                           keep_for_backward=True)
    assert cache.blocks == [(0, 3)]


@pytest.mark.skipif(NUMBA_MISSING, reason=NUMBA_REASON)
def test_compiled_kernels_split_only_blocks_worth_a_thread(monkeypatch):
    """The article's batch of one never splits; the main job's batch of 32 rows of 192 units does."""
    from xlstm_backends import numba_kernels

    monkeypatch.setenv(row_threads.THREADS_VARIABLE, "2")
    assert numba_kernels._row_blocks(1, 5) == [(0, 1)]
    assert numba_kernels._row_blocks(16, 5) == [(0, 16)]
    assert numba_kernels._row_blocks(32, 192) == [(0, 16), (16, 32)]
    monkeypatch.setenv(row_threads.THREADS_VARIABLE, "1")
    assert numba_kernels._row_blocks(32, 192) == [(0, 32)]


@pytest.mark.parametrize("kernels", KERNELS)
def test_kernels_are_used_on_numpy_and_skipped_under_layer_norm(monkeypatch, kernels):
    calls = []
    module = _kernels(kernels)
    monkeypatch.setenv(numpy_backend.KERNELS_VARIABLE, kernels)
    original = module.lstm_forward
    monkeypatch.setattr(module, "lstm_forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = xlstm.asarray(np.ones((2, 3, 4)), dtype="float32", backend="numpy")
    xlstm.dynamic_rnn(xlstm.LSTMCell(5, 4, backend="numpy"), x)
    assert calls == [1]
    xlstm.dynamic_rnn(xlstm.LSTMCell(5, 4, layer_norm=True, backend="numpy"), x)
    assert calls == [1]


@pytest.mark.parametrize("kernels", KERNELS)
def test_kernels_never_write_into_the_callers_arrays(monkeypatch, kernels):
    """B = H = 1 makes a transpose contiguous: the kernels must still copy the states they update."""
    monkeypatch.setenv(numpy_backend.KERNELS_VARIABLE, kernels)
    c0, h0 = (xlstm.asarray([[0.5]], dtype="float64", backend="numpy") for _ in range(2))
    cell = xlstm.LSTMCell(1, 1, seed=0, dtype="float64", backend="numpy")
    x = xlstm.asarray(np.ones((1, 3, 1)), backend="numpy")
    _, final, backward = xlstm.dynamic_rnn_vjp(cell, x, xlstm.LSTMState(c0, h0))
    d_c, d_h = (xlstm.asarray([[1.0]], dtype="float64", backend="numpy") for _ in range(2))
    backward(None, xlstm.LSTMState(d_c, d_h))
    assert c0.tolist() == [[0.5]] and h0.tolist() == [[0.5]] and d_c.tolist() == [[1.0]] and d_h.tolist() == [[1.0]]


@pytest.mark.skipif(NUMBA_MISSING, reason=NUMBA_REASON)
def test_float32_tanh_of_the_compiled_kernels_is_within_a_few_ulp():
    """The rational tanh against NumPy's float64 tanh over the whole float32 range that matters."""
    import numba

    from xlstm_backends.numba_kernels import tanh

    compiled = numba.njit(lambda x: [tanh(v) for v in x])
    x = np.concatenate([np.linspace(-10, 10, 200_001), [-1e-30, 0.0, 1e-30, 50.0, -50.0]]).astype(np.float32)
    approximate = np.array(compiled(x), dtype=np.float64)
    exact = np.tanh(x.astype(np.float64))
    assert np.max(np.abs(approximate - exact)) < 4 * np.finfo(np.float32).eps
    assert compiled(np.array([0.5]))[0] == np.tanh(0.5)  # float64: math.tanh itself


def test_kernel_choice_follows_the_environment(monkeypatch):
    monkeypatch.setenv(numpy_backend.KERNELS_VARIABLE, "numpy")
    assert NumpyLibrary().lstm_kernels() is numpy_kernels
    assert "NumPy kernels" in NumpyLibrary().description
    monkeypatch.setenv(numpy_backend.KERNELS_VARIABLE, "fortran")
    with pytest.raises(ValueError, match="XLSTM_KERNELS must be one of"):
        NumpyLibrary().lstm_kernels()
    monkeypatch.delenv(numpy_backend.KERNELS_VARIABLE)
    assert numpy_backend.kernel_choice() == ("numpy" if NUMBA_MISSING else "numba")
    if NUMBA_MISSING:
        monkeypatch.setenv(numpy_backend.KERNELS_VARIABLE, "numba")
        with pytest.raises(ValueError, match="not installed: pip install 'xlstm-array\\[fast\\]'"):
            NumpyLibrary().lstm_kernels()


def test_numpy_kernels_forward_weights_fold_bias_forget_bias_and_halves_into_the_gate_blocks():
    """The one-pass weight preparation against its definition: rows reordered to f, i, o, c, the forget
    bias added, the sigmoid rows halved; the bias is the input projection's first column (its rows
    are [1, x_t]); the unscaled reordered W only when a backward pass will need it."""
    units, input_size = 3, 2
    weights = np.random.default_rng(1).normal(size=(4 * units, 1 + input_size + units))
    prepared = numpy_kernels._forward_weights(weights, input_size, units, 0.7, keep_for_backward=False)
    ordered = weights[numpy_kernels.kernel_order(units)]
    expected = ordered.copy()
    expected[:units, 0] += 0.7
    expected[: numpy_kernels.SIGMOID_GATES * units] *= 0.5
    np.testing.assert_array_equal(prepared.inputs, expected[:, : 1 + input_size])
    np.testing.assert_array_equal(prepared.recurrent, expected[:, 1 + input_size :])
    assert prepared.ordered is None and prepared.recurrent.flags.c_contiguous
    kept = numpy_kernels._forward_weights(weights, input_size, units, 0.7, keep_for_backward=True)
    np.testing.assert_array_equal(kept.ordered, ordered)


def test_numpy_kernels_row_blocks_outputs_are_feature_major_memory(monkeypatch):
    """Row blocks copy their [T, H, b] outputs into [T, H, B] memory (no transposing copy); the result
    is the same [T, B, H] array as one block's."""
    rng = np.random.default_rng(2)
    weights, inputs, c0 = rng.normal(size=(8, 6)), rng.normal(size=(4, 7, 3)), rng.normal(size=(7, 2))
    monkeypatch.setenv(row_threads.THREADS_VARIABLE, "1")
    whole, *_ = numpy_kernels.lstm_forward(inputs, weights, c0, c0, 1.0)
    monkeypatch.setenv(row_threads.THREADS_VARIABLE, "3")
    monkeypatch.setattr(numpy_kernels, "MIN_BLOCK_CELLS", 1)
    split, *_ = numpy_kernels.lstm_forward(inputs, weights, c0, c0, 1.0)
    assert split.shape == (4, 7, 2) and split.transpose(0, 2, 1).flags.c_contiguous
    np.testing.assert_allclose(split, whole, rtol=1e-14, atol=1e-14)
