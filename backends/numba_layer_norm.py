"""Compiled CPU kernels for the layer-norm LSTM's time loop (the optional `fast` extra: numba).

The cell is TensorFlow 1's `LayerNormBasicLSTMCell(layer_norm=True)`, as in
`xlstm.cell.lstm_step_internals`: the pre-activations a = [x_t, h_{t-1}]·W[:, 1:]ᵀ (no bias
column: the norms' shifts play the bias) are normalised over each gate block's H units,
x̂ = (a − mean)/√(var + ε), then scaled and shifted by that gate's gain and shift; the forget
bias is added after the norm; dropout multiplies the candidate after its tanh; the new cell
state f⊙c_{t-1} + i⊙g is normalised the same way with the fifth gain and shift, and the
normalised state is the one carried. Rows past their sequence length keep their state and
output zero.

The generic array-API code runs some sixty array operations per step, each a trip through
the interpreter; here each direction of the whole sequence is one compiled call per block of
batch rows (`row_threads`: the rows of a recurrence never meet, so each core runs its own
block): per step one BLAS product for the recurrent term and one loop over each row that
does all of its normalisation and pointwise work. Everything is batch-major, gates [B, 4H]
in xlstm's order f, i, c, o (the blocks are normalised one by one, so no reordering helps).
Means and variances are summed with reassociation allowed, so that they vectorise: the
float64 numbers equal the generic code's to rounding. float32 uses `numba_kernels.tanh`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy

from xlstm_backends.numba_kernels import BLAS, JIT, ONE_THREAD_BELOW, backward_buffers, empty, tanh
from xlstm_backends.row_threads import row_blocks, run_on_row_blocks

DESCRIPTION = f"compiled layer-norm kernels (numba {numba.__version__})"
# A block of fewer rows is not worth a thread of its own. Measured on the shared 2-core machine:
# B = 128 in two blocks ran 1.2× faster than in one, B = 32 in two blocks of 16 ran slower
# (main job 29k against 33k tokens/s): each block's per-step BLAS product gets too thin.
MIN_ROWS = 32
NORMS = 5  # rows of norm_gain / norm_shift: the gates f, i, c, o, then the cell state
# Sums may be reordered (and so vectorised) only inside the two reductions below.
REDUCTION = {**JIT, "fastmath": JIT["fastmath"] | {"reassoc"}}


@numba.njit(**REDUCTION)
def _normalise(x, out, epsilon, size, one):
    """out = (x − mean(x))·(1/σ) with σ² = mean((x − mean)²) + ε; returns 1/σ (`functional.normalise`).
    `size` (x's length) and `one` come in x's dtype: an integer would promote float32 to float64."""
    total = one - one
    for j in range(x.shape[0]):
        total += x[j]
    mean = total / size
    squares = one - one
    for j in range(x.shape[0]):
        centered = x[j] - mean
        out[j] = centered
        squares += centered * centered
    inverse_std = one / math.sqrt(squares / size + epsilon)
    for j in range(x.shape[0]):
        out[j] *= inverse_std
    return inverse_std


@numba.njit(**REDUCTION)
def _normalise_vjp(d_normalised, normalised, inverse_std, size):
    """In place, dx̂ → dx = (1/σ)·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) (`cell_grad.layer_norm_vjp`)."""
    zero = size - size  # in the arrays' dtype
    total, dot = zero, zero
    for j in range(d_normalised.shape[0]):
        total += d_normalised[j]
        dot += d_normalised[j] * normalised[j]
    mean, mean_dot = total / size, dot / size
    for j in range(d_normalised.shape[0]):
        d_normalised[j] = inverse_std * (d_normalised[j] - mean - normalised[j] * mean_dot)


@numba.njit(**JIT)
def _forward_rows(start, stop, projected, recurrent, gain, shift, forget_bias, epsilon, c, h, masks, valid, outputs,
                  kept, inverse_stds, keep, size, one):
    """Run every step for rows start…stop − 1, in place. projected [T, B, 4H] (x_t·W_xᵀ),
    recurrent W_h [4H, H]; c, h [B, H] the state, updated; masks [T, B, H] or [0, B, H]; valid
    [T, B] or [0, B]. kept = (gates, gates_normalised, cells, cells_normalised, tanh_cells,
    carried_h) and inverse_stds [., B, 5]: with `keep` every step's entry (cells has T + 1, the
    state entering each step, then the last); without it one reused entry, cells and carried_h empty.
    size = H and one = 1 in the arrays' dtype (a literal would be float64).
    """
    gates, gates_normalised, cells, cells_normalised, tanh_cells, carried_h = kept
    steps, four_units = projected.shape[0], projected.shape[2]
    units, rows = four_units // 4, stop - start
    half, zero = one / (one + one), one - one
    no_mask = numpy.ones(units, projected.dtype)
    h_t = numpy.empty((units, rows), projected.dtype)
    a = numpy.empty((rows, four_units), projected.dtype)
    c_raw = numpy.empty(units, projected.dtype)
    for t in range(steps):
        # W_h·h_{t-1}ᵀ, then transposed: the faster orientation for OpenBLAS (see numba_kernels)
        h_t[:] = h[start:stop].T
        a[:] = numpy.dot(recurrent, h_t).T
        slot = t if keep else 0
        for b in range(start, stop):
            if keep:
                carried_h[t, b] = h[b]
                cells[t, b] = c[b]
            out = outputs[t, b]
            if valid.shape[0] and not valid[t, b]:  # a finished row keeps its state; its output is zero
                out[:] = zero
                continue
            row, x = a[b - start], projected[t, b]
            for k in range(four_units):
                row[k] += x[k]
            act, normalised, inverse_std = gates[slot, b], gates_normalised[slot, b], inverse_stds[slot, b]
            for gate in range(4):
                first, end = gate * units, (gate + 1) * units
                inverse_std[gate] = _normalise(row[first:end], normalised[first:end], epsilon, size, one)
            f, i, g, o = act[:units], act[units : 2 * units], act[2 * units : 3 * units], act[3 * units :]
            f_hat, i_hat, g_hat, o_hat = (normalised[:units], normalised[units : 2 * units],
                                          normalised[2 * units : 3 * units], normalised[3 * units :])
            mask = masks[t, b] if masks.shape[0] else no_mask
            cb = c[b]
            for j in range(units):  # σ(a) = ½·tanh(½a) + ½
                f[j] = half * tanh(half * (f_hat[j] * gain[0, j] + shift[0, j] + forget_bias)) + half
                i[j] = half * tanh(half * (i_hat[j] * gain[1, j] + shift[1, j])) + half
                g[j] = tanh(g_hat[j] * gain[2, j] + shift[2, j])
                o[j] = half * tanh(half * (o_hat[j] * gain[3, j] + shift[3, j])) + half
                c_raw[j] = f[j] * cb[j] + i[j] * (g[j] * mask[j])
            c_hat = cells_normalised[slot, b]
            inverse_std[4] = _normalise(c_raw, c_hat, epsilon, size, one)
            hb, tanh_c = h[b], tanh_cells[slot, b]
            for j in range(units):
                cb[j] = c_hat[j] * gain[4, j] + shift[4, j]
                tanh_c[j] = tanh(cb[j])
                hb[j] = o[j] * tanh_c[j]
                out[j] = hb[j]
    if keep:
        cells[steps, start:stop] = c[start:stop]


@numba.njit(**JIT)
def _backward_rows(start, stop, kept, inverse_stds, masks, valid, gain, recurrent_t, d_outputs, d_c, d_h, d_gates,
                   d_gain, d_shift, size, one):
    """Walk the steps backwards for rows start…stop − 1, in place: d_c, d_h [B, H] become the
    initial state's gradients, d_gates [T, B, 4H] every step's pre-activation gradients, and
    d_gain, d_shift [5, H] (this block's own) gather the norms' parameter gradients."""
    gates, gates_normalised, cells, cells_normalised, tanh_cells, _ = kept
    steps, four_units = gates.shape[0], gates.shape[2]
    units, rows = four_units // 4, stop - start
    no_mask = numpy.ones(units, gates.dtype)
    d_state = numpy.empty(units, gates.dtype)
    d_gates_t = numpy.empty((four_units, rows), gates.dtype)
    for t in range(steps - 1, -1, -1):
        for b in range(start, stop):
            d = d_gates[t, b]
            if valid.shape[0] and not valid[t, b]:  # a padded step passes the state's gradient straight through
                d[:] = 0
                continue
            act, normalised, inverse_std = gates[t, b], gates_normalised[t, b], inverse_stds[t, b]
            f, i, g, o = act[:units], act[units : 2 * units], act[2 * units : 3 * units], act[3 * units :]
            d_f, d_i, d_g, d_o = d[:units], d[units : 2 * units], d[2 * units : 3 * units], d[3 * units :]
            mask = masks[t, b] if masks.shape[0] else no_mask
            c_prev, c_hat, tanh_c = cells[t, b], cells_normalised[t, b], tanh_cells[t, b]
            dcb, dhb, d_out = d_c[b], d_h[b], d_outputs[t, b]
            for j in range(units):  # down to the normalised cell state: c_t = ĉ·gain + shift
                dh = dhb[j] + d_out[j]
                dc = dcb[j] + dh * o[j] * (one - tanh_c[j] * tanh_c[j])
                d_o[j] = dh * tanh_c[j] * o[j] * (one - o[j])
                d_gain[4, j] += dc * c_hat[j]
                d_shift[4, j] += dc
                d_state[j] = dc * gain[4, j]
            _normalise_vjp(d_state, c_hat, inverse_std[4], size)
            for j in range(units):  # through f⊙c_{t-1} + i⊙(g⊙mask) to each gate's normalised pre-activation
                dc = d_state[j]
                d_f[j] = dc * c_prev[j] * f[j] * (one - f[j])
                d_i[j] = dc * g[j] * mask[j] * i[j] * (one - i[j])
                d_g[j] = dc * i[j] * mask[j] * (one - g[j] * g[j])
                dcb[j] = dc * f[j]
            for gate in range(4):  # through each gate's norm: â·gain + shift
                block = d[gate * units : (gate + 1) * units]
                for j in range(units):
                    d_gain[gate, j] += block[j] * normalised[gate * units + j]
                    d_shift[gate, j] += block[j]
                    block[j] *= gain[gate, j]
                _normalise_vjp(block, normalised[gate * units : (gate + 1) * units], inverse_std[gate], size)
        d_gates_t[:] = d_gates[t, start:stop].T  # W_hᵀ·d_gatesᵀ: the faster orientation, as in the forward loop
        d_h_prev = numpy.dot(recurrent_t, d_gates_t).T
        for b in range(start, stop):
            if valid.shape[0] == 0 or valid[t, b]:
                d_h[b] = d_h_prev[b - start]


def _blas_threads(blocks: list[tuple[int, int]], units: int):
    """One BLAS thread while the rows run on several threads, or for small products (numba_kernels' rule)."""
    rows = blocks[0][1] - blocks[0][0]
    small = rows * units * 4 * units < ONE_THREAD_BELOW
    return BLAS.limit(limits=1 if len(blocks) > 1 or small else None, user_api="blas")


class ForwardCache(NamedTuple):
    """What the backward pass needs from the forward pass (batch-major, gates f, i, c, o)."""

    weights: numpy.ndarray  # [4H, 1 + I + H]
    norm_gain: numpy.ndarray  # [5, H]
    inputs: numpy.ndarray  # [T, B, I]
    # gates, gates_normalised [T, B, 4H]; cells [T + 1, B, H]; cells_normalised, tanh_cells, carried_h [T, B, H]
    kept: tuple
    inverse_stds: numpy.ndarray  # 1/σ of the four gate blocks and the cell state, [T, B, 5]
    masks: numpy.ndarray  # dropout masks [T, B, H], or [0, B, H] without dropout
    valid: numpy.ndarray  # [T, B] booleans, or [0, B] without lengths


def lstm_forward(inputs, weights, c0, h0, forget_bias: float, masks=None, valid=None, keep_for_backward=False, *,
                 norm_gain, norm_shift, norm_epsilon: float):
    """Unroll the layer-norm LSTM over time-major inputs [T, B, I]; norm_gain, norm_shift [5, H].

    Returns (outputs [T, B, H], c_T, h_T, cache or None), as `numba_kernels.lstm_forward`.
    """
    steps, batch, input_size = inputs.shape
    units = c0.shape[1]
    dtype = weights.dtype
    inputs = numpy.ascontiguousarray(inputs, dtype)
    projected = empty((steps, batch, 4 * units), dtype)
    numpy.matmul(inputs.reshape(steps * batch, input_size), weights[:, 1 : 1 + input_size].T,
                 out=projected.reshape(steps * batch, 4 * units))
    recurrent = numpy.ascontiguousarray(weights[:, 1 + input_size :])  # [4H, H]
    gain, shift = numpy.ascontiguousarray(norm_gain, dtype), numpy.ascontiguousarray(norm_shift, dtype)
    masks = numpy.empty((0, batch, units), dtype) if masks is None else numpy.ascontiguousarray(masks, dtype)
    valid = numpy.empty((0, batch), numpy.bool_) if valid is None else numpy.ascontiguousarray(valid[:, :, 0])
    kept_steps = steps if keep_for_backward else 1
    kept = (empty((kept_steps, batch, 4 * units), dtype), empty((kept_steps, batch, 4 * units), dtype),
            empty((steps + 1 if keep_for_backward else 0, batch, units), dtype),
            empty((kept_steps, batch, units), dtype), empty((kept_steps, batch, units), dtype),
            empty((steps if keep_for_backward else 0, batch, units), dtype))
    inverse_stds = empty((kept_steps, batch, NORMS), dtype)
    c, h = numpy.array(c0, dtype, order="C"), numpy.array(h0, dtype, order="C")  # copies: updated in place
    outputs = empty((steps, batch, units), dtype)
    blocks = row_blocks(batch, MIN_ROWS)

    def run_rows(start: int, stop: int) -> None:
        _forward_rows(start, stop, projected, recurrent, gain, shift, dtype.type(forget_bias),
                      dtype.type(norm_epsilon), c, h, masks, valid, outputs, kept, inverse_stds, keep_for_backward,
                      dtype.type(units), dtype.type(1.0))

    with _blas_threads(blocks, units):
        run_on_row_blocks(run_rows, blocks)
    cache = ForwardCache(weights, gain, inputs, kept, inverse_stds, masks, valid) if keep_for_backward else None
    return outputs, c, h, cache


def lstm_backward(cache: ForwardCache, d_outputs, d_c, d_h):
    """Backpropagate through the loop of `lstm_forward`.

    Returns (d_weights [4H, 1 + I + H] with a zero bias column, d_inputs [T, B, I], d_c0, d_h0,
    d_norm_gain [5, H], d_norm_shift [5, H]).
    """
    steps, batch, input_size = cache.inputs.shape
    units = cache.norm_gain.shape[1]
    dtype = cache.weights.dtype
    d_outputs, d_c, d_h, d_gates, recurrent_t = backward_buffers(cache.weights, input_size, units, steps, d_outputs,
                                                                 d_c, d_h)
    blocks = row_blocks(batch, MIN_ROWS)
    d_norms = numpy.zeros((len(blocks), 2, NORMS, units), dtype)  # each block's own gain and shift sums

    def run_rows(start: int, stop: int) -> None:
        d_gain, d_shift = d_norms[blocks.index((start, stop))]
        _backward_rows(start, stop, cache.kept, cache.inverse_stds, cache.masks, cache.valid, cache.norm_gain,
                       recurrent_t, d_outputs, d_c, d_h, d_gates, d_gain, d_shift, dtype.type(units), dtype.type(1.0))

    with _blas_threads(blocks, units):
        run_on_row_blocks(run_rows, blocks)
    d_gain, d_shift = d_norms.sum(axis=0)
    rows = steps * batch
    flat_d_gates = d_gates.reshape(rows, 4 * units)
    d_weights = numpy.empty_like(cache.weights)
    d_weights[:, 0] = 0  # no bias column under layer norm: the norms' shifts play the bias
    numpy.matmul(flat_d_gates.T, cache.inputs.reshape(rows, input_size), out=d_weights[:, 1 : 1 + input_size])
    carried_h = cache.kept[5]
    numpy.matmul(flat_d_gates.T, carried_h.reshape(rows, units), out=d_weights[:, 1 + input_size :])
    d_inputs = empty((rows, input_size), dtype)
    numpy.matmul(flat_d_gates, cache.weights[:, 1 : 1 + input_size], out=d_inputs)
    return d_weights, d_inputs.reshape(steps, batch, input_size), d_c, d_h, d_gain, d_shift
