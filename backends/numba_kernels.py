"""Compiled CPU kernels for the plain LSTM's time loop (the optional `fast` extra: numba).

The NumPy kernels pay for every step in calls: about thirty ufunc passes and copies over
[H, B] arrays in the backward step, each a trip through the interpreter, and NumPy's
float32 tanh on a CPU without AVX-512 runs scalar at ~3 ns an element, a third of a step
at the default model's size. Here each direction of the whole sequence is one compiled
call: per step one BLAS product (`np.dot`, the recurrent term) and one fused loop over
[B, H] that does the whole step's pointwise work. Everything is batch-major: gates
[B, 4H] in the order f, i, o, c, states [B, H]. Batch rows never meet, so the batch is cut into
row blocks and each runs the whole loop on a thread of its own (`row_threads`, XLSTM_THREADS).

float32 uses a rational approximation of tanh (Eigen's, clamped at ±7.9053: at most a
few units in the last place) that the compiler can vectorise; float64 uses `math.tanh`,
so the float64 numbers equal the generic array-API code's to rounding. Same interface as
`numpy_kernels`: `lstm_forward`, `lstm_backward`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy
import scipy.linalg.cython_blas  # noqa: F401 - the BLAS numba's np.dot calls: loaded before it is counted
from numba.core import types
from numba.extending import overload
from threadpoolctl import ThreadpoolController

from xlstm_backends.numpy_kernels import kernel_order
from xlstm_backends.row_threads import row_blocks, run_on_row_blocks, thread_count
from xlstm_backends.workspace import WORKSPACE

DESCRIPTION = f"compiled kernels (numba {numba.__version__})"
empty = WORKSPACE.empty
# The compiled loops' per-step products run on one BLAS thread unless they are large: with
# NumPy's and SciPy's OpenBLAS each keeping two threads on two cores, the pools spun against
# each other and the main job ran at 0.30× PyTorch's speed instead of 0.61× (measured); at the
# large bench shape (B = 128, H = 512) one thread made the forward pass 1.8× torch's time against 1.5×.
BLAS = ThreadpoolController()
ONE_THREAD_BELOW = 1 << 24  # multiply-adds of one step's product [B, H]·[H, 4H]
# A thread of its own pays only for a block of at least 8 rows and 512 row-units (rows·H): below,
# OpenBLAS takes about as long for the block's product as for twice the rows (it streams all of W_h
# either way) and, at small H, handing work to a thread and rows sharing cache lines cost more than
# they save (B = 16: H = 64 0.75× the one-thread time, H = 32 1.02×, H = 5 1.49×; README).
MIN_ROWS, MIN_ROW_UNITS = 8, 512


def _row_blocks(batch: int, units: int) -> list[tuple[int, int]]:
    """The batch's row blocks, one per thread, each big enough to be worth its thread."""
    return row_blocks(batch, max(MIN_ROWS, -(-MIN_ROW_UNITS // units)))


def _blas_threads(blocks: list[tuple[int, int]], units: int):
    """A context that keeps the BLAS to one thread inside the time loops when the batch is split
    over threads (they already fill the cores) or the per-step product is small; else to
    XLSTM_THREADS (default: every usable CPU)."""
    rows = blocks[0][1] - blocks[0][0]
    one = len(blocks) > 1 or rows * units * 4 * units < ONE_THREAD_BELOW
    return BLAS.limit(limits=1 if one else thread_count(), user_api="blas")


JIT = {"error_model": "numpy", "nogil": True, "cache": True, "fastmath": {"contract", "arcp", "nsz"}}
# The backward loop's per-step product [rows, 4H]·W_h on the compiled side (`_product`) instead of
# OpenBLAS for blocks of at most 16 rows when W_h fits in half a core's L2 (2 MB here): main job's
# backward loop (H = 192, 2 × 16 rows) 4.7 → 3.8 ms, medium (H = 256) 14.1 → 12.4 ms; with 32-row blocks
# at H = 256 it took 1.04-1.1× BLAS's time (OpenBLAS's packing pays off over more rows), and at H = 512
# (W_h 4 MB) 1.5×: it streams W_h from L3 once per four rows (README, h-nb).
HAND_PRODUCT_MAX_BYTES, HAND_PRODUCT_MAX_ROWS = 1 << 20, 16

# Eigen's float tanh: x·P(x²)/Q(x²), clamped where tanh rounds to ±1 in float32.
TANH_CLAMP = 7.90531110763549805
TANH_P = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
          -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)
TANH_Q = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)


def tanh(x):  # noqa: D103 - replaced inside compiled code by the overload below
    return math.tanh(x)


@overload(tanh, inline="always", jit_options={"fastmath": JIT["fastmath"]})
def _tanh_for(x):
    """float32: the vectorisable rational approximation; float64 and others: math.tanh."""
    if isinstance(x, types.Float) and x.bitwidth == 32:
        clamp = numpy.float32(TANH_CLAMP)
        p0, p1, p2, p3, p4, p5, p6 = (numpy.float32(c) for c in TANH_P)
        q0, q1, q2, q3 = (numpy.float32(c) for c in TANH_Q)

        def rational(x):
            x = min(max(x, -clamp), clamp)
            x2 = x * x
            top = ((((((p6 * x2 + p5) * x2 + p4) * x2 + p3) * x2 + p2) * x2 + p1) * x2 + p0) * x
            bottom = ((q3 * x2 + q2) * x2 + q1) * x2 + q0
            return top / bottom

        return rational
    return lambda x: math.tanh(x)


@numba.njit(**(JIT | {"fastmath": JIT["fastmath"] | {"reassoc"}}))
def _product(x, w, out):
    """out[b, n] = Σ_k x[b, k]·w[n, k], with no packing or temporaries: the per-step product of a
    backward loop, whose rows and W_h stay in cache between steps. Sixteen dot products, 4 rows by
    4 columns, share each pass over k (reassociated so that the compiler vectorises the sums);
    edge rows and columns go one by one."""
    rows, depth = x.shape
    width = w.shape[0]
    full_rows, full_cols = rows - rows % 4, width - width % 4
    for b in range(0, full_rows, 4):
        x0, x1, x2, x3 = x[b], x[b + 1], x[b + 2], x[b + 3]
        for n in range(0, full_cols, 4):
            w0, w1, w2, w3 = w[n], w[n + 1], w[n + 2], w[n + 3]
            s00, s01, s02, s03 = x0[0] * w0[0], x0[0] * w1[0], x0[0] * w2[0], x0[0] * w3[0]
            s10, s11, s12, s13 = x1[0] * w0[0], x1[0] * w1[0], x1[0] * w2[0], x1[0] * w3[0]
            s20, s21, s22, s23 = x2[0] * w0[0], x2[0] * w1[0], x2[0] * w2[0], x2[0] * w3[0]
            s30, s31, s32, s33 = x3[0] * w0[0], x3[0] * w1[0], x3[0] * w2[0], x3[0] * w3[0]
            for k in range(1, depth):  # starting from k = 0's products keeps the sums in the arrays' dtype
                s00 += x0[k] * w0[k]
                s01 += x0[k] * w1[k]
                s02 += x0[k] * w2[k]
                s03 += x0[k] * w3[k]
                s10 += x1[k] * w0[k]
                s11 += x1[k] * w1[k]
                s12 += x1[k] * w2[k]
                s13 += x1[k] * w3[k]
                s20 += x2[k] * w0[k]
                s21 += x2[k] * w1[k]
                s22 += x2[k] * w2[k]
                s23 += x2[k] * w3[k]
                s30 += x3[k] * w0[k]
                s31 += x3[k] * w1[k]
                s32 += x3[k] * w2[k]
                s33 += x3[k] * w3[k]
            out[b, n], out[b, n + 1], out[b, n + 2], out[b, n + 3] = s00, s01, s02, s03
            out[b + 1, n], out[b + 1, n + 1], out[b + 1, n + 2], out[b + 1, n + 3] = s10, s11, s12, s13
            out[b + 2, n], out[b + 2, n + 1], out[b + 2, n + 2], out[b + 2, n + 3] = s20, s21, s22, s23
            out[b + 3, n], out[b + 3, n + 1], out[b + 3, n + 2], out[b + 3, n + 3] = s30, s31, s32, s33
    for b in range(rows):
        xb = x[b]
        for n in range(0 if b >= full_rows else full_cols, width):
            wn = w[n]
            total = xb[0] * wn[0]
            for k in range(1, depth):
                total += xb[k] * wn[k]
            out[b, n] = total


@numba.njit(**JIT)
def _forward_loop(projected, recurrent, c, h, masks, valid, outputs, gates, cells, tanh_cells, carried_h, keep,
                  one, start, stop):
    """Run every step in place for the batch rows [start, stop) (rows never meet, so blocks of
    rows can run on separate threads). projected [T, B, 4H] (inputs·Wxᵀ + bias), recurrent W_h
    [4H, H]; c, h [B, H] the state, updated; masks [T, B, H] or [0, B, H]; valid [T, B] or [0, B].
    With `keep` every step's values are kept for the backward pass (gates, cells, tanh_cells
    and carried_h have T or T + 1 entries); without it gates and tanh_cells have one, reused.

    Each inner loop runs over one contiguous row with no branch inside, so that the
    compiler vectorises it; rows that differ (finished, dropout) choose their loop outside.
    """
    steps, batch, four_units = projected.shape
    units = four_units // 4
    sigmoids = 3 * units
    half, zero = one / (one + one), one - one  # constants in the arrays' dtype (a literal would be float64)
    no_mask = numpy.ones(units, projected.dtype)
    h_t = numpy.empty((units, stop - start), projected.dtype)
    a = numpy.empty((stop - start, four_units), projected.dtype)
    for t in range(steps):
        # W_h·h_{t-1}ᵀ, then transposed: OpenBLAS runs this orientation faster than h_{t-1}·W_hᵀ
        # (1.04× at B = 32, H = 192; 1.34× at H = 256), the two small copies included.
        h_t[:] = h[start:stop].T
        a[:] = numpy.dot(recurrent, h_t).T
        slot = t if keep else 0
        if keep:
            carried_h[t, start:stop] = h[start:stop]
            cells[t, start:stop] = c[start:stop]
        for b in range(start, stop):
            row, x, act = a[b - start], projected[t, b], gates[slot, b]
            for k in range(sigmoids):  # σ(a) = ½·tanh(½a) + ½ for f, i, o
                act[k] = half * tanh(half * (row[k] + x[k])) + half
            for k in range(sigmoids, four_units):
                act[k] = tanh(row[k] + x[k])
            f, i, o, g = act[:units], act[units : 2 * units], act[2 * units : sigmoids], act[sigmoids:]
            mask = masks[t, b] if masks.shape[0] else no_mask
            cb, hb, tanh_c, out = c[b], h[b], tanh_cells[slot, b], outputs[t, b]
            if valid.shape[0] == 0 or valid[t, b]:
                for j in range(units):
                    c_new = f[j] * cb[j] + i[j] * (g[j] * mask[j])
                    cb[j] = c_new
                    tanh_c[j] = tanh(c_new)
                    hb[j] = o[j] * tanh_c[j]
                    out[j] = hb[j]
            else:  # a finished row keeps its state; its output is zero
                for j in range(units):
                    tanh_c[j] = tanh(f[j] * cb[j] + i[j] * (g[j] * mask[j]))
                    out[j] = zero
    if keep:
        cells[steps, start:stop] = c[start:stop]


@numba.njit(**JIT)
def _backward_loop(gates, cells, tanh_cells, masks, valid, recurrent_t, d_outputs, d_c, d_h, d_gates, one, hand,
                   start, stop):
    """Walk the steps backwards in place for the batch rows [start, stop): d_c, d_h [B, H]
    become the initial state's gradients and d_gates [T, B, 4H] every step's pre-activation
    gradients. `hand`: the recurrent product by `_product` rather than BLAS."""
    steps, batch, four_units = gates.shape
    units = four_units // 4
    no_mask = numpy.ones(units, gates.dtype)
    d_gates_t = numpy.empty((0 if hand else four_units, stop - start), gates.dtype)
    d_h_prev = numpy.empty((stop - start, units), gates.dtype)
    for t in range(steps - 1, -1, -1):
        alive = numpy.ones(batch, numpy.bool_) if valid.shape[0] == 0 else valid[t]
        for b in range(start, stop):
            d = d_gates[t, b]
            if not alive[b]:  # a padded step passes the state's gradient straight through
                d[:] = 0
                continue
            act = gates[t, b]
            f, i, o, g = act[:units], act[units : 2 * units], act[2 * units : 3 * units], act[3 * units :]
            d_f, d_i, d_o, d_g = d[:units], d[units : 2 * units], d[2 * units : 3 * units], d[3 * units :]
            mask = masks[t, b] if masks.shape[0] else no_mask
            c_prev, tanh_c, d_out, dcb, dhb = cells[t, b], tanh_cells[t, b], d_outputs[t, b], d_c[b], d_h[b]
            for j in range(units):
                dh = dhb[j] + d_out[j]
                dc = dcb[j] + dh * o[j] * (one - tanh_c[j] * tanh_c[j])
                d_f[j] = dc * c_prev[j] * f[j] * (one - f[j])
                d_i[j] = dc * g[j] * mask[j] * i[j] * (one - i[j])
                d_o[j] = dh * tanh_c[j] * o[j] * (one - o[j])
                d_g[j] = dc * i[j] * mask[j] * (one - g[j] * g[j])
                dcb[j] = dc * f[j]
        if hand:
            _product(d_gates[t, start:stop], recurrent_t, d_h_prev)
        else:
            d_gates_t[:] = d_gates[t, start:stop].T  # W_hᵀ·d_gatesᵀ: the faster orientation, as in the forward loop
            d_h_prev[:] = numpy.dot(recurrent_t, d_gates_t).T
        for b in range(start, stop):
            if alive[b]:
                d_h[b] = d_h_prev[b - start]


class ForwardCache(NamedTuple):
    """What the backward pass needs from the forward pass (kernel gate order, batch-major)."""

    weights: numpy.ndarray  # W rows reordered, [4H, 1 + I + H]
    inputs: numpy.ndarray  # [T, B, I]
    carried_h: numpy.ndarray  # h_{t-1} for every step [T, B, H]
    gates: numpy.ndarray  # activated f, i, o and tanh candidate, [T, B, 4H]
    cells: numpy.ndarray  # c_{t-1} for every step, then c_T: [T + 1, B, H]
    tanh_cells: numpy.ndarray  # tanh(c_t) [T, B, H]
    masks: numpy.ndarray  # dropout masks [T, B, H], or [0, B, H] without dropout
    valid: numpy.ndarray  # [T, B] booleans, or [0, B] without lengths


def lstm_forward(inputs, weights, c0, h0, forget_bias: float, masks=None, valid=None, keep_for_backward=False):
    """Unroll the plain LSTM over time-major inputs [T, B, I].

    Returns (outputs [T, B, H], c_T, h_T, cache or None), as `numpy_kernels.lstm_forward`.
    """
    steps, batch, input_size = inputs.shape
    units = c0.shape[1]
    dtype = weights.dtype
    w = weights[kernel_order(units)]
    inputs = numpy.ascontiguousarray(inputs, dtype)
    projected = empty((steps, batch, 4 * units), dtype)
    numpy.matmul(inputs.reshape(steps * batch, input_size), w[:, 1 : 1 + input_size].T,
                 out=projected.reshape(steps * batch, 4 * units))
    bias = w[:, 0].copy()
    bias[:units] += forget_bias
    projected += bias
    recurrent = numpy.ascontiguousarray(w[:, 1 + input_size :])  # [4H, H]
    masks = numpy.empty((0, batch, units), dtype) if masks is None else numpy.ascontiguousarray(masks, dtype)
    valid = numpy.empty((0, batch), numpy.bool_) if valid is None else numpy.ascontiguousarray(valid[:, :, 0])
    kept = steps if keep_for_backward else 1
    c, h = numpy.array(c0, dtype, order="C"), numpy.array(h0, dtype, order="C")  # copies: updated in place
    outputs = empty((steps, batch, units), dtype)
    gates = empty((kept, batch, 4 * units), dtype)
    tanh_cells = empty((kept, batch, units), dtype)
    cells = empty((steps + 1 if keep_for_backward else 0, batch, units), dtype)
    carried_h = empty((steps if keep_for_backward else 0, batch, units), dtype)
    blocks = _row_blocks(batch, units)
    with _blas_threads(blocks, units):
        run_on_row_blocks(lambda start, stop: _forward_loop(projected, recurrent, c, h, masks, valid, outputs, gates,
                                                            cells, tanh_cells, carried_h, keep_for_backward,
                                                            dtype.type(1.0), start, stop), blocks)
    cache = ForwardCache(w, inputs, carried_h, gates, cells, tanh_cells, masks, valid) if keep_for_backward else None
    return outputs, c, h, cache


def backward_buffers(weights, input_size: int, units: int, steps: int, d_outputs, d_c, d_h) -> tuple:
    """What a backward loop reads and writes, batch-major in the weights' dtype: d_outputs [T, B, H]
    (zeros when None), copies of d_c and d_h (updated in place), d_gates [T, B, 4H] to fill, and
    the recurrent weights transposed, [H, 4H]."""
    dtype, batch = weights.dtype, d_c.shape[0]
    if d_outputs is None:
        d_outputs = numpy.zeros((steps, batch, units), dtype)
    d_outputs = numpy.ascontiguousarray(d_outputs, dtype)
    d_c, d_h = numpy.array(d_c, dtype, order="C"), numpy.array(d_h, dtype, order="C")
    d_gates = empty((steps, batch, 4 * units), dtype)
    recurrent_t = numpy.ascontiguousarray(weights[:, 1 + input_size :].T)
    return d_outputs, d_c, d_h, d_gates, recurrent_t


def lstm_backward(cache: ForwardCache, d_outputs, d_c, d_h):
    """Backpropagate through the loop of `lstm_forward`.

    Returns (d_weights in xlstm's layout [4H, 1 + I + H], d_inputs [T, B, I], d_c0, d_h0).
    """
    steps, batch, input_size = cache.inputs.shape
    units = cache.cells.shape[2]
    dtype = cache.gates.dtype
    d_outputs, d_c, d_h, d_gates, recurrent_t = backward_buffers(cache.weights, input_size, units, steps, d_outputs,
                                                                 d_c, d_h)
    blocks = _row_blocks(batch, units)
    hand = (recurrent_t.nbytes <= HAND_PRODUCT_MAX_BYTES
            and max(stop - start for start, stop in blocks) <= HAND_PRODUCT_MAX_ROWS)
    with _blas_threads(blocks, units):
        run_on_row_blocks(lambda start, stop: _backward_loop(cache.gates, cache.cells, cache.tanh_cells, cache.masks,
                                                             cache.valid, recurrent_t, d_outputs, d_c, d_h, d_gates,
                                                             dtype.type(1.0), hand, start, stop), blocks)
    rows = steps * batch
    flat_d_gates = d_gates.reshape(rows, 4 * units)
    d_weights = numpy.empty_like(cache.weights)
    d_weights[:, 0] = flat_d_gates.sum(axis=0)
    numpy.matmul(flat_d_gates.T, cache.inputs.reshape(rows, input_size), out=d_weights[:, 1 : 1 + input_size])
    numpy.matmul(flat_d_gates.T, cache.carried_h.reshape(rows, units), out=d_weights[:, 1 + input_size :])
    d_inputs = empty((rows, input_size), dtype)
    numpy.matmul(flat_d_gates, cache.weights[:, 1 : 1 + input_size], out=d_inputs)
    unordered = numpy.empty_like(d_weights)
    unordered[kernel_order(units)] = d_weights
    return unordered, d_inputs.reshape(steps, batch, input_size), d_c, d_h
