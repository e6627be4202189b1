"""Fused NumPy kernels for the layer-norm LSTM's time loop, forward and backward: the default
install's layer-norm path (`numba_layer_norm` is the compiled one of the `fast` extra).

The cell is TensorFlow 1's `LayerNormBasicLSTMCell(layer_norm=True)` of `xlstm.cell.lstm_step_internals`
(spelled out in `numba_layer_norm`): each gate block's pre-activations, computed without the bias
column, and then the new cell state are normalised over their H units, scaled and shifted.

The generic array-API code runs some sixty array operations per step, each allocating a new
array. These kernels follow `numpy_kernels` and reuse its pieces: in-place ufuncs into buffers
allocated once per call (`backends.workspace`), feature-major gates [4H, b] in the order
f, i, o, c, so that the four gate blocks are normalised at once as a [4, H, b] view and one
tanh activates all four gates (σ(y) = ½·tanh(½y) + ½, the inner ½ folded into the sigmoid
gates' gains and shifts, the forget bias into the forget gate's shift); one matmul for the
input projection of all steps, one for every weight gradient; batch rows in blocks on threads
of their own (`backends.row_threads`). The means are products with a row of 1/H, not sums along
the units (8× faster at H = 256); float64 results equal the generic code's to rounding.
"""
from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import numpy

from xlstm_backends.numpy_kernels import (
    SIGMOID_GATES, backward_on_row_blocks, carry_state, cell_update, empty, feature_major,
    forward_on_row_blocks, gate_gradients, kernel_order, output_gradients, previous_state_gradients, state_gradients,
    step_product, weight_and_input_gradients)

DESCRIPTION = "NumPy layer-norm kernels (fused in-place ufuncs; pip install 'xlstm-array[fast]' for compiled ones)"
NORMS = 5  # rows of norm_gain / norm_shift: the gates f, i, c, o, then the cell state
# The smallest row block worth a thread of its own, in cells of an [H, b] state: four times numpy_kernels'
# threshold, the loop making more, shorter NumPy calls per step (GIL handoffs). Measured (2 cores): B = 32,
# H = 256 in two blocks 1.3× slower than in one; B = 64 the same forward; B = 128, H = 512 1.15–1.25× faster.
MIN_BLOCK_CELLS = 16384


class Norms(NamedTuple):
    """The norms' parameters as columns, rows in the kernels' order (gates f, i, o, c, then the state)."""

    gain: numpy.ndarray  # [5H, 1], as given: what the backward pass needs
    gates_gain: numpy.ndarray  # [4H, 1], sigmoid rows halved
    gates_shift: numpy.ndarray  # [4H, 1], forget bias added, sigmoid rows halved
    state_shift: numpy.ndarray  # [H, 1]
    epsilon: float


class Weights(NamedTuple):
    """The weights and norms in the kernels' gate order f, i, o, c."""

    ordered: numpy.ndarray  # W rows reordered, [4H, 1 + I + H] (the bias column unused)
    inputs: numpy.ndarray  # input weights [4H, I]
    recurrent: numpy.ndarray  # recurrent weights, contiguous [4H, H]
    norms: Norms


class RowsCache(NamedTuple):
    """What the backward pass needs from one row block's forward loop (feature-major)."""

    inputs_and_h: numpy.ndarray  # [T, b, I + H]: x_t and h_{t-1}, the rows of the weight gradient
    gates: numpy.ndarray  # activated f, i, o and tanh candidate, [T, 4H, b]
    normalised: numpy.ndarray  # x̂ of the four gate blocks, then of the new cell state: [T, 5H, b]
    inverse_stds: numpy.ndarray  # 1/σ of the four gate blocks and the cell state, [T, 5, 1, b]
    cells: numpy.ndarray  # c_{t-1} for every step, then c_T: [T + 1, H, b]
    tanh_cells: numpy.ndarray  # tanh(c_t) [T, H, b]
    masks: numpy.ndarray | None  # dropout masks [T, H, b]
    valid: numpy.ndarray | None  # [T, 1, b] booleans


class ForwardCache(NamedTuple):
    """What the backward pass needs from the forward pass: the weights and norms, and each row block's loop."""

    weights: Weights
    blocks: list[tuple[int, int]]  # [start, stop) of every row block
    rows: list[RowsCache]  # one per block


def _norm_order(units: int) -> numpy.ndarray:
    """Row indices taking the flattened [5H] norms, gates f, i, c, o then the state, to the kernels' order."""
    return numpy.concatenate([kernel_order(units), numpy.arange(4 * units, NORMS * units)])


def _prepare(weights: numpy.ndarray, norm_gain, norm_shift, forget_bias: float, norm_epsilon: float,
             input_size: int, units: int) -> Weights:
    """Reorder the gates of the weights and norms; fold the forget bias and σ(y) = ½·tanh(½y) + ½'s inner ½ into
    the gates' gains and shifts once, so one tanh covers all four gates each step."""
    order = _norm_order(units)
    gain, shift = (numpy.asarray(norm, weights.dtype).reshape(NORMS * units)[order, None] for norm in (norm_gain,
                                                                                                       norm_shift))
    half = numpy.ones((4 * units, 1), weights.dtype)
    half[: SIGMOID_GATES * units] = 0.5
    gates_shift = shift[: 4 * units].copy()
    gates_shift[:units] += forget_bias
    norms = Norms(gain, gain[: 4 * units] * half, gates_shift * half, shift[4 * units :], norm_epsilon)
    w = weights[kernel_order(units)]
    return Weights(w, w[:, 1 : 1 + input_size], numpy.ascontiguousarray(w[:, 1 + input_size :]), norms)


def _normalise(x, out, inverse_std, mean_row, epsilon: float) -> None:
    """Layer norm over axis 1 (the units) of every block of x [K, H, b]: x̂ = (x − mean)·(1/σ) into `out`, 1/σ
    [K, 1, b] into `inverse_std`, σ² = mean((x − mean)²) + ε (`functional.normalise`); x is overwritten.
    The means are products with mean_row [1, H] (every entry 1/H): 8× faster than a sum along axis 1 at H = 256."""
    numpy.matmul(mean_row, x, out=inverse_std)
    numpy.subtract(x, inverse_std, out=out)
    numpy.multiply(out, out, out=x)
    numpy.matmul(mean_row, x, out=inverse_std)
    inverse_std += epsilon
    numpy.sqrt(inverse_std, out=inverse_std)
    numpy.divide(1.0, inverse_std, out=inverse_std)  # as the generic code (power(σ², −½) is an ulp off)
    out *= inverse_std


def _normalise_vjp(d_normalised, normalised, inverse_std, mean_row, means, scratch) -> None:
    """In place over axis 1 of [K, H, b] blocks, dx̂ → dx = (1/σ)·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))
    (`cell_grad.layer_norm_vjp`), the means as in `_normalise`; means [K, 1, b] and scratch [K, H, b] are
    overwritten."""
    numpy.multiply(d_normalised, normalised, out=scratch)
    numpy.matmul(mean_row, scratch, out=means)
    numpy.multiply(normalised, means, out=scratch)
    numpy.matmul(mean_row, d_normalised, out=means)
    d_normalised -= means
    d_normalised -= scratch
    d_normalised *= inverse_std


def _across_rows(batch: int, *columns: numpy.ndarray) -> list[numpy.ndarray]:
    """Each column [K, 1] repeated into a contiguous [K, batch]: in-place ops between arrays of one shape run
    2–4× faster than along a broadcast column when a block has few rows (32 × 256 units: 8–12 µs against 3)."""
    return [numpy.ascontiguousarray(numpy.broadcast_to(column, (column.shape[0], batch))) for column in columns]


def _step_views(gates, normalised, inverse_std, c, c_new, tanh_c, units: int) -> tuple:
    """One step's views: gates [4H, b] whole, its sigmoid block and f, i, o, g; the gates' x̂ as [4H, b] and
    [4, H, b], the state's as [H, b] and [1, H, b]; the gates' and the state's 1/σ; c_{t-1}, c_t and tanh(c_t)."""
    sigmoids, gates_hat, state_hat = SIGMOID_GATES * units, normalised[: 4 * units], normalised[4 * units :]
    return (gates, gates[:sigmoids], gates[:units], gates[units : 2 * units], gates[2 * units : sigmoids],
            gates[sigmoids:], gates_hat, gates_hat.reshape(4, units, -1), state_hat, state_hat.reshape(1, units, -1),
            inverse_std[:4], inverse_std[4:], c, c_new, tanh_c)


def lstm_forward(inputs, weights, c0, h0, forget_bias: float, masks=None, valid=None, keep_for_backward=False, *,
                 norm_gain, norm_shift, norm_epsilon: float):
    """Unroll the layer-norm LSTM over time-major inputs [T, B, I]; norm_gain, norm_shift [5, H].

    Returns (outputs [T, B, H], c_T, h_T, cache or None), as `numpy_kernels.lstm_forward`.
    """
    units = c0.shape[1]
    prepared = _prepare(weights, norm_gain, norm_shift, forget_bias, norm_epsilon, inputs.shape[2], units)
    min_rows = -(-MIN_BLOCK_CELLS // units)
    outputs, c, h, blocks, caches = forward_on_row_blocks(functools.partial(_forward_rows, prepared), inputs, c0, h0,
                                                          masks, valid, keep_for_backward, min_rows)
    return outputs, c, h, ForwardCache(prepared, blocks, caches) if keep_for_backward else None


def _forward_rows(weights: Weights, inputs, c0, h0, masks, valid, keep_for_backward: bool):
    """`lstm_forward`'s loop over one block of batch rows: (outputs, c_T, h_T, RowsCache or None)."""
    steps, batch, input_size = inputs.shape
    units = c0.shape[1]
    dtype = weights.ordered.dtype
    norms = weights.norms
    # All steps' input projections at once: [4H, I] · [I, T·B]; step t is columns t·B … t·B + B.
    projected = empty((4 * units, steps * batch), dtype)
    numpy.matmul(weights.inputs, inputs.reshape(steps * batch, input_size).T, out=projected)
    masks, valid = feature_major(masks), feature_major(valid)

    outputs = empty((steps, units, batch), dtype)
    kept_steps = steps if keep_for_backward else 1  # without the backward pass one step's buffers, reused
    gates = empty((kept_steps, 4 * units, batch), dtype)
    normalised = empty((kept_steps, NORMS * units, batch), dtype)
    inverse_stds = empty((kept_steps, NORMS, 1, batch), dtype)
    tanh_cells = empty((kept_steps, units, batch), dtype)
    if keep_for_backward:  # every step's gates and states are kept for the backward pass
        cells = empty((steps + 1, units, batch), dtype)
        inputs_and_h = empty((steps, batch, input_size + units), dtype)
        inputs_and_h[:, :, :input_size] = inputs
        views = (_step_views(gates[t], normalised[t], inverse_stds[t], cells[t], cells[t + 1], tanh_cells[t], units)
                 for t in range(steps))
    else:  # the previous and the new c swap roles every step
        cells = numpy.empty((2, units, batch), dtype)
        pair = [_step_views(gates[0], normalised[0], inverse_stds[0], cells[k], cells[1 - k], tanh_cells[0], units)
                for k in (0, 1)]
        views = itertools.islice(itertools.cycle(pair), steps)
    cells[0][...] = c0.T
    h = numpy.array(h0.T, dtype=dtype, order="C")  # a copy: h is updated in place
    a = numpy.empty((4 * units, batch), dtype)  # the pre-activations, then their squares
    c_raw = numpy.empty((units, batch), dtype)  # f ⊙ c_{t-1} + i ⊙ g before its norm
    scratch = numpy.empty((units, batch), dtype)
    a_blocks, c_raw_block = a.reshape(4, units, batch), c_raw.reshape(1, units, batch)
    projected_steps = [projected[:, t * batch : (t + 1) * batch] for t in range(steps)]
    product, epsilon = step_product(weights.recurrent, batch), norms.epsilon
    mean_row = numpy.full((1, units), 1.0 / units, dtype)
    gates_gain, gates_shift, state_gain, state_shift = _across_rows(
        batch, norms.gates_gain, norms.gates_shift, norms.gain[4 * units :], norms.state_shift)
    tanh, multiply = numpy.tanh, numpy.multiply  # local: fewer lookups
    carried_h_per_step = keep_for_backward and valid is not None  # else copied from the outputs after the loop
    for t, (act, sigmoids, f, i, o, g, gates_hat, gates_hat_blocks, state_hat, state_hat_block, gates_inverse_std,
            state_inverse_std, c, c_new, tanh_c) in enumerate(views):
        if carried_h_per_step:
            inputs_and_h[t, :, input_size:] = h.T
        product(h, a)
        a += projected_steps[t]
        _normalise(a_blocks, gates_hat_blocks, gates_inverse_std, mean_row, epsilon)
        multiply(gates_hat, gates_gain, out=act)
        act += gates_shift
        tanh(act, out=act)
        multiply(sigmoids, 0.5, out=sigmoids)
        sigmoids += 0.5
        cell_update(f, i, g, None if masks is None else masks[t], c, c_raw, scratch)
        _normalise(c_raw_block, state_hat_block, state_inverse_std, mean_row, epsilon)
        multiply(state_hat, state_gain, out=c_new)
        c_new += state_shift
        tanh(c_new, out=tanh_c)
        h_new = outputs[t]
        multiply(o, tanh_c, out=h_new)
        h = carry_state(None if valid is None else valid[t], c, c_new, h, h_new)
    c = cells[steps] if keep_for_backward else cells[steps % 2]
    cache = None
    if keep_for_backward:
        if not carried_h_per_step and steps:
            inputs_and_h[0, :, input_size:] = h0
            inputs_and_h[1:, :, input_size:] = outputs[:-1].transpose(0, 2, 1)
        cache = RowsCache(inputs_and_h, gates, normalised, inverse_stds, cells, tanh_cells, masks, valid)
    # copies: h may be a view of the outputs, c of the cache
    return outputs.transpose(0, 2, 1), numpy.array(c.T, order="C"), numpy.array(h.T, order="C"), cache


def lstm_backward(cache: ForwardCache, d_outputs, d_c, d_h):
    """Backpropagate through the loop of `lstm_forward`, each row block on the thread it ran on forwards.

    Returns (d_weights [4H, 1 + I + H] with a zero bias column, d_inputs [T, B, I], d_c0, d_h0,
    d_norm_gain [5, H], d_norm_shift [5, H]).
    """
    weights = cache.weights
    units, input_size = weights.recurrent.shape[1], weights.inputs.shape[1]
    backward_rows = functools.partial(_backward_rows, recurrent_weights_t=numpy.ascontiguousarray(weights.recurrent.T),
                                      input_weights=weights.inputs, gain=weights.norms.gain)
    sums, d_inputs, d_c0, d_h0 = backward_on_row_blocks(backward_rows, cache.blocks, cache.rows, d_outputs, d_c, d_h,
                                                        input_size)
    d_weights, d_gain, d_shift = sums
    unordered = numpy.empty_like(d_weights)
    unordered[kernel_order(units)] = d_weights
    d_norms = numpy.empty((2, NORMS * units), d_weights.dtype)
    d_norms[:, _norm_order(units)] = d_gain, d_shift
    return unordered, d_inputs, d_c0, d_h0, d_norms[0].reshape(NORMS, units), d_norms[1].reshape(NORMS, units)


def _backward_rows(cache: RowsCache, d_outputs, d_c, d_h, *, recurrent_weights_t, input_weights, gain):
    """`lstm_backward`'s loop over one block of batch rows: ((d_weights, d_gain [5H], d_shift [5H]) in the kernels'
    order, d_inputs, d_c0, d_h0)."""
    steps, batch, _ = cache.inputs_and_h.shape
    units = cache.cells.shape[1]
    dtype = cache.gates.dtype
    d_outputs = feature_major(d_outputs)
    d_gates = empty((4 * units, steps, batch), dtype)  # the pre-activations' gradients; column block t is step t
    d_norms = empty((steps, NORMS * units, batch), dtype)  # those of every step's x̂·gain + shift, gates then state
    d_h = numpy.array(d_h.T, dtype=dtype, order="C")  # copies: both are updated in place
    d_c = numpy.array(d_c.T, dtype=dtype, order="C")
    d_h_step, d_state, scratch = (numpy.empty((units, batch), dtype) for _ in range(3))
    product_t = step_product(recurrent_weights_t, batch)
    step_d_gates, gates_scratch = (numpy.empty((4, units, batch), dtype) for _ in range(2))
    means = numpy.empty((4, 1, batch), dtype)
    mean_row = numpy.full((1, units), 1.0 / units, dtype)
    slopes = numpy.empty((SIGMOID_GATES * units, batch), dtype)  # σ(1 − σ) of f, i, o: the sigmoids' slopes
    slope_f, slope_i, slope_o = (slopes[k * units : (k + 1) * units] for k in range(SIGMOID_GATES))
    gates_gain, state_gain = _across_rows(batch, gain[: 4 * units], gain[4 * units :])
    flat_step_d_gates = step_d_gates.reshape(4 * units, batch)
    d_state_block, scratch_block = d_state.reshape(1, units, batch), scratch.reshape(1, units, batch)
    masks, valid = cache.masks, cache.valid
    multiply = numpy.multiply
    for t in reversed(range(steps)):
        (_, sigmoids, f, i, o, g, _, gates_hat_blocks, _, state_hat_block, gates_inverse_std, state_inverse_std,
         c_prev, _, tanh_c) = _step_views(cache.gates[t], cache.normalised[t], cache.inverse_stds[t], cache.cells[t],
                                          cache.cells[t + 1], cache.tanh_cells[t], units)
        d_y = d_norms[t]
        d_f, d_i, d_o, d_g = (d_y[k * units : (k + 1) * units] for k in range(4))
        d_c_step = d_y[4 * units :]  # the gradient of c_t = ĉ·gain + shift
        valid_t, mask = None if valid is None else valid[t], None if masks is None else masks[t]
        state_gradients(d_h, d_c, None if d_outputs is None else d_outputs[t], valid_t, d_h_step, d_c_step)
        numpy.subtract(1.0, sigmoids, out=slopes)
        slopes *= sigmoids
        output_gradients(d_h_step, o, tanh_c, slope_o, d_o, d_c_step, scratch)
        multiply(d_c_step, state_gain, out=d_state)  # through the state's norm to f ⊙ c_{t-1} + i ⊙ g
        _normalise_vjp(d_state_block, state_hat_block, state_inverse_std, mean_row, means[:1], scratch_block)
        gate_gradients(d_state, c_prev, f, i, g, mask, slope_f, slope_i, d_f, d_i, d_g, scratch)
        multiply(d_y[: 4 * units], gates_gain, out=flat_step_d_gates)  # through the gates' norms
        _normalise_vjp(step_d_gates, gates_hat_blocks, gates_inverse_std, mean_row, means, gates_scratch)
        d_gates[:, t, :] = flat_step_d_gates
        previous_state_gradients(d_state, f, valid_t, product_t, flat_step_d_gates, d_c, d_h, scratch)
    d_weights, d_inputs = weight_and_input_gradients(d_gates, cache.inputs_and_h, input_weights, bias=False)
    d_shift = d_norms.sum(axis=0).sum(axis=1)  # over the steps first: 4× faster than both axes at once
    d_norms *= cache.normalised
    d_gain = d_norms.sum(axis=0).sum(axis=1)
    return (d_weights, d_gain, d_shift), d_inputs, numpy.ascontiguousarray(d_c.T), numpy.ascontiguousarray(d_h.T)
