"""Fused NumPy kernels for the plain LSTM's time loop, forward and backward.

The generic array-API code allocates fresh arrays for every operation of every step.
These kernels compute the same numbers with in-place ufuncs (`out=`) into buffers
allocated once per call, and keep the weights in the layout the matmuls want:

- everything inside the loop is feature-major: gates [4H, B], states [H, B]. The per-step
  product is then W_h·h_{t-1} with the weights on the left, which OpenBLAS runs about
  1.6× faster than h·W_hᵀ at the sizes of an LSTM step;
- the gate rows are reordered once to f, i, o, c so the three sigmoid gates are one
  contiguous block; with σ(x) = ½·tanh(½x) + ½ and the inner ½ folded into the weights,
  one in-place tanh activates all four gates;
- the input projection of all steps is one matmul over rows [1, x_t], so the bias (and the
  forget bias) rides in the product as its first column instead of a pass of its own;
- the backward pass forms every weight gradient with one matmul after the time loop,
  over rows [x_t, h_{t-1}] saved by the forward pass (after the projection's ones).
- the large buffers (the projection, the outputs, what the backward pass keeps, the gate
  gradients) come from `backends.workspace`, which reuses memory from earlier calls: fresh
  pages would cost a page fault each on first write, as much as the arithmetic at medium sizes.
- both cores: the batch rows of a recurrence never meet, so the batch is cut into row blocks
  (`backends.row_threads`, XLSTM_THREADS) and each thread runs the whole loop over its own rows,
  in buffers of its own; NumPy releases the GIL inside its ufuncs and products. Inside the
  blocks BLAS runs on one thread (threadpoolctl): two callers each asking OpenBLAS for every
  core make its threads spin against each other.
The layer-norm cell has no NumPy kernel: it runs the generic code here, and compiled kernels
(`numba_layer_norm`) with the `fast` extra.
"""
from __future__ import annotations

import functools
import itertools
from typing import Any, Callable, NamedTuple

import numpy
from threadpoolctl import ThreadpoolController

from xlstm_backends.row_threads import row_blocks, run_on_row_blocks
from xlstm_backends.workspace import WORKSPACE

DESCRIPTION = "NumPy kernels (fused in-place ufuncs; pip install 'xlstm-array[fast]' for compiled ones)"
empty = WORKSPACE.empty  # large buffers reuse memory from earlier calls: no page faults

SIGMOID_GATES = 3  # f, i, o come first in the kernels' gate order; the candidate c is last
# The smallest row block worth a thread of its own, in cells of an [H, b] state: below it the
# GIL handoffs of a block's many short NumPy calls ate the second core's gain (README, Speed).
MIN_BLOCK_CELLS = 4096


KERNEL_BLOCKS = (0, 1, 3, 2)  # the kernels' gate k is xlstm's gate block KERNEL_BLOCKS[k]: f, i, o, c from f, i, c, o


def kernel_order(units: int) -> numpy.ndarray:
    """Row indices taking xlstm's gate blocks f, i, c, o to the kernels' f, i, o, c."""
    return numpy.concatenate([numpy.arange(block * units, (block + 1) * units) for block in KERNEL_BLOCKS])


class Weights(NamedTuple):
    """The weights in the kernels' gate order f, i, o, c, and as the forward loop uses them."""

    ordered: numpy.ndarray | None  # W rows reordered, [4H, 1 + I + H]: what the backward pass needs
    inputs: numpy.ndarray  # bias plus forget bias, then input weights; sigmoid rows halved, [4H, 1 + I]
    recurrent: numpy.ndarray  # recurrent weights, sigmoid rows halved, contiguous [4H, H]


class RowsCache(NamedTuple):
    """What the backward pass needs from one row block's forward loop (feature-major)."""

    inputs_and_h: numpy.ndarray  # [T, b, 1 + I + H]: 1, x_t and h_{t-1}, the rows of the weight gradient
    gates: numpy.ndarray  # activated f, i, o and tanh candidate, [T, 4H, b]
    cells: numpy.ndarray  # c_{t-1} for every step, then c_T: [T + 1, H, b]
    tanh_cells: numpy.ndarray  # tanh(c_t) [T, H, b]
    masks: numpy.ndarray | None  # dropout masks [T, H, b]
    valid: numpy.ndarray | None  # [T, 1, b] booleans


class ForwardCache(NamedTuple):
    """What the backward pass needs from the forward pass: the weights, and each row block's loop."""

    weights: numpy.ndarray  # W rows reordered, [4H, 1 + I + H]
    blocks: list[tuple[int, int]]  # [start, stop) of every row block
    rows: list[RowsCache]  # one per block


@functools.cache
def _blas() -> ThreadpoolController:
    """The process's BLAS libraries, found once (looking them up takes milliseconds)."""
    return ThreadpoolController()


def _on_row_blocks(blocks: list[tuple[int, int]], work: Callable[[int, slice], Any]) -> list[Any]:
    """[work(k, rows of block k) for every block], the blocks side by side on threads of their own,
    BLAS on one thread inside each."""
    index = {start: k for k, (start, _) in enumerate(blocks)}
    results: list[Any] = [None] * len(blocks)

    def run(start: int, stop: int) -> None:
        results[index[start]] = work(index[start], slice(start, stop))

    with _blas().limit(limits=1, user_api="blas"):
        run_on_row_blocks(run, blocks)
    return results


def _rows(array: numpy.ndarray | None, rows: slice) -> numpy.ndarray | None:
    """Batch rows `rows` of a time-major [T, B, ...] array (None stays None)."""
    return None if array is None else array[:, rows]


def _feature_major(array: numpy.ndarray | None) -> numpy.ndarray | None:
    """[T, B, K] → contiguous [T, K, B] (None stays None)."""
    if array is None:
        return None
    copy = empty((array.shape[0], array.shape[2], array.shape[1]), array.dtype)
    numpy.copyto(copy, array.transpose(0, 2, 1))
    return copy


def _step_views(gates, c, c_new, tanh_c, units: int) -> tuple:
    """One step's views: gates [4H, B] whole, its sigmoid block and f, i, o, g; then c_{t-1},
    c_t and tanh(c_t)."""
    sigmoids = SIGMOID_GATES * units
    return (gates, gates[:sigmoids], gates[:units], gates[units : 2 * units], gates[2 * units : sigmoids],
            gates[sigmoids:], c, c_new, tanh_c)


def _forward_weights(weights: numpy.ndarray, input_size: int, units: int, forget_bias: float,
                     keep_for_backward: bool) -> Weights:
    """Reorder the gates, add the forget bias, and fold σ(a) = ½·tanh(½a) + ½'s inner ½ into the
    sigmoid gates' rows once, so one tanh covers all four gates each step and two in-place ops
    finish the sigmoids. The reordered, unscaled W is kept only for a backward pass."""
    inputs = numpy.empty((4 * units, 1 + input_size), weights.dtype)
    recurrent = numpy.empty((4 * units, units), weights.dtype)
    for k, block in enumerate(KERNEL_BLOCKS):  # one pass: each gate block copied and scaled at once
        to, source = slice(k * units, (k + 1) * units), weights[block * units : (block + 1) * units]
        scale = 0.5 if k < SIGMOID_GATES else 1.0
        numpy.multiply(source[:, : 1 + input_size], scale, out=inputs[to])
        numpy.multiply(source[:, 1 + input_size :], scale, out=recurrent[to])
    inputs[:units, 0] += 0.5 * forget_bias  # exact: halving is
    return Weights(weights[kernel_order(units)] if keep_for_backward else None, inputs, recurrent)


def lstm_forward(inputs, weights, c0, h0, forget_bias: float, masks=None, valid=None, keep_for_backward=False):
    """Unroll the plain LSTM over time-major inputs [T, B, I], each row block on a thread of its own.

    Returns (outputs [T, B, H], c_T, h_T, cache or None). Without `keep_for_backward` the
    loop allocates nothing per step: O(B·H) buffers are reused across steps.
    """
    steps, batch, input_size = inputs.shape
    units = c0.shape[1]
    prepared = _forward_weights(weights, input_size, units, forget_bias, keep_for_backward)
    blocks = row_blocks(batch, min_rows=-(-MIN_BLOCK_CELLS // units))
    if len(blocks) == 1:
        outputs, c, h, rows_cache = _forward_rows(prepared, inputs, c0, h0, masks, valid, keep_for_backward)
        return outputs, c, h, ForwardCache(prepared.ordered, blocks, [rows_cache]) if keep_for_backward else None
    # [T, B, H] over feature-major memory, like each block's own outputs: copying a block in is no transposition
    outputs = empty((steps, units, batch), weights.dtype).transpose(0, 2, 1)
    c, h = (numpy.empty((batch, units), weights.dtype) for _ in range(2))

    def work(_: int, rows: slice) -> RowsCache | None:  # each thread copies its rows into the results
        outputs[:, rows], c[rows], h[rows], rows_cache = _forward_rows(
            prepared, inputs[:, rows], c0[rows], h0[rows], _rows(masks, rows), _rows(valid, rows), keep_for_backward)
        return rows_cache

    caches = _on_row_blocks(blocks, work)
    return outputs, c, h, ForwardCache(prepared.ordered, blocks, caches) if keep_for_backward else None


def _forward_rows(weights: Weights, inputs, c0, h0, masks, valid, keep_for_backward: bool):
    """`lstm_forward`'s loop over one block of batch rows: (outputs, c_T, h_T, RowsCache or None)."""
    steps, batch, input_size = inputs.shape
    units = c0.shape[1]
    dtype = weights.inputs.dtype
    # Rows [1, x_t] (and h_{t-1}, filled in for a backward pass, whose weight gradient they are);
    # all steps' input projections, bias included, at once: [4H, 1 + I] · [1 + I, T·B], step t in
    # columns t·B … t·B + B.
    inputs_and_h = empty((steps, batch, 1 + input_size + (units if keep_for_backward else 0)), dtype)
    inputs_and_h[:, :, 0] = 1.0
    inputs_and_h[:, :, 1 : 1 + input_size] = inputs
    projected = empty((4 * units, steps * batch), dtype)
    numpy.matmul(weights.inputs, inputs_and_h[:, :, : 1 + input_size].reshape(steps * batch, 1 + input_size).T,
                 out=projected)
    recurrent_weights = weights.recurrent
    masks, valid = _feature_major(masks), _feature_major(valid)

    outputs = empty((steps, units, batch), dtype)
    if keep_for_backward:  # every step's gates and states are kept for the backward pass
        gates = empty((steps, 4 * units, batch), dtype)
        cells = empty((steps + 1, units, batch), dtype)
        tanh_cells = empty((steps, units, batch), dtype)
        views = (_step_views(gates[t], cells[t], cells[t + 1], tanh_cells[t], units) for t in range(steps))
    else:  # one step's buffers, reused; the previous and the new c swap roles every step
        gates = numpy.empty((4 * units, batch), dtype)
        cells = numpy.empty((2, units, batch), dtype)
        tanh_c = numpy.empty((units, batch), dtype)
        pair = [_step_views(gates, cells[k], cells[1 - k], tanh_c, units) for k in (0, 1)]
        views = itertools.islice(itertools.cycle(pair), steps)
    cells[0][...] = c0.T
    h = numpy.array(h0.T, dtype=dtype, order="C")  # a copy: h is updated in place
    scratch = numpy.empty((units, batch), dtype)
    projected_steps = [projected[:, t * batch : (t + 1) * batch] for t in range(steps)]
    matmul, tanh, multiply, copyto = numpy.matmul, numpy.tanh, numpy.multiply, numpy.copyto  # local: fewer lookups
    # h_{t-1} for the weight gradient: without lengths it is the previous output, copied after the loop
    carried_h_per_step = keep_for_backward and valid is not None
    # At the article's size (B = 1, H = 5) a step is ~5 µs of call overhead: the loop body is kept
    # to the NumPy calls themselves, every view it needs built before the loop where possible.
    for t, (a, sigmoids, f, i, o, g, c, c_new, tanh_c) in enumerate(views):
        matmul(recurrent_weights, h, out=a)
        a += projected_steps[t]
        tanh(a, out=a)
        multiply(sigmoids, 0.5, out=sigmoids)
        sigmoids += 0.5
        if masks is not None:
            multiply(g, masks[t], out=scratch)
            g = scratch
        if carried_h_per_step:
            inputs_and_h[t, :, 1 + input_size :] = h.T
        multiply(i, g, out=c_new)  # i ⊙ g first: `scratch` may hold g
        multiply(f, c, out=scratch)
        c_new += scratch
        tanh(c_new, out=tanh_c)
        h_new = outputs[t]
        multiply(o, tanh_c, out=h_new)
        if valid is None:
            h = h_new  # the output is the next step's h: no copy
        else:  # finished rows keep their state; their outputs are zero
            copyto(c_new, c, where=~valid[t])
            copyto(h, h_new, where=valid[t])
            h_new *= valid[t]
    c = cells[steps] if keep_for_backward else cells[steps % 2]
    if keep_for_backward and not carried_h_per_step and steps:
        inputs_and_h[0, :, 1 + input_size :] = h0
        inputs_and_h[1:, :, 1 + input_size :] = outputs[:-1].transpose(0, 2, 1)
    cache = None
    if keep_for_backward:
        cache = RowsCache(inputs_and_h, gates, cells, tanh_cells, masks, valid)
    # copies: h may be a view of the outputs, c of the cache
    return outputs.transpose(0, 2, 1), numpy.array(c.T, order="C"), numpy.array(h.T, order="C"), cache


def lstm_backward(cache: ForwardCache, d_outputs, d_c, d_h):
    """Backpropagate through the loop of `lstm_forward`, each row block on the thread it ran on
    forwards; the blocks' weight gradients are summed.

    Returns (d_weights in xlstm's layout [4H, 1 + I + H], d_inputs [T, B, I], d_c0, d_h0).
    """
    units = cache.weights.shape[0] // 4
    input_size = cache.weights.shape[1] - 1 - units
    recurrent_weights_t = numpy.ascontiguousarray(cache.weights[:, 1 + input_size :].T)  # [H, 4H]
    input_weights = cache.weights[:, 1 : 1 + input_size]
    if len(cache.blocks) == 1:
        d_weights, d_inputs, d_c0, d_h0 = _backward_rows(cache.rows[0], recurrent_weights_t, input_weights,
                                                         d_outputs, d_c, d_h)
    else:
        steps, batch = cache.rows[0].gates.shape[0], d_c.shape[0]
        d_inputs = empty((steps, batch, input_size), cache.weights.dtype)
        d_c0, d_h0 = (numpy.empty((batch, units), cache.weights.dtype) for _ in range(2))

        def work(k: int, rows: slice) -> numpy.ndarray:  # each thread copies its rows into the results
            block_d_weights, d_inputs[:, rows], d_c0[rows], d_h0[rows] = _backward_rows(
                cache.rows[k], recurrent_weights_t, input_weights, _rows(d_outputs, rows), d_c[rows], d_h[rows])
            return block_d_weights

        d_weights, *others = _on_row_blocks(cache.blocks, work)
        for block_d_weights in others:
            d_weights += block_d_weights
    unordered = numpy.empty_like(d_weights)
    unordered[kernel_order(units)] = d_weights
    return unordered, d_inputs, d_c0, d_h0


def _backward_rows(cache: RowsCache, recurrent_weights_t, input_weights, d_outputs, d_c, d_h):
    """`lstm_backward`'s loop over one block of batch rows: (d_weights in the kernels' gate order,
    d_inputs, d_c0, d_h0)."""
    steps, batch, width = cache.inputs_and_h.shape
    units = cache.cells.shape[1]
    input_size = width - 1 - units
    dtype = cache.gates.dtype
    d_outputs = _feature_major(d_outputs)
    d_gates = empty((4 * units, steps, batch), dtype)  # column block t is step t
    d_h = numpy.array(d_h.T, dtype=dtype, order="C")  # copies: both are updated in place
    d_c = numpy.array(d_c.T, dtype=dtype, order="C")
    d_h_step, d_c_step, scratch = (numpy.empty((units, batch), dtype) for _ in range(3))
    step_d_gates = numpy.empty((4 * units, batch), dtype)
    d_f, d_i, d_o, d_g = (step_d_gates[k * units : (k + 1) * units] for k in range(4))
    slopes = numpy.empty((SIGMOID_GATES * units, batch), dtype)  # σ(1 − σ) of f, i, o: the sigmoids' slopes
    slope_f, slope_i, slope_o = (slopes[k * units : (k + 1) * units] for k in range(SIGMOID_GATES))
    matmul, multiply, subtract, copyto = numpy.matmul, numpy.multiply, numpy.subtract, numpy.copyto
    masks, valid = cache.masks, cache.valid
    if valid is None:  # dc is updated in place: its new value is computed last, from d_c_step ⊙ f
        d_c_step = d_c
    for t in reversed(range(steps)):
        _, sigmoids, f, i, o, g, c_prev, _, tanh_c = _step_views(cache.gates[t], cache.cells[t], cache.cells[t + 1],
                                                                cache.tanh_cells[t], units)
        if d_outputs is not None:
            numpy.add(d_h, d_outputs[t], out=d_h_step)
        else:
            d_h_step[...] = d_h
        if valid is not None:  # padded steps pass the state's gradient straight through
            multiply(d_c, valid[t], out=d_c_step)
            d_h_step *= valid[t]
        subtract(1.0, sigmoids, out=slopes)
        slopes *= sigmoids
        # d_o = dh ⊙ tanh(c) ⊙ o(1 − o)
        multiply(d_h_step, tanh_c, out=d_o)
        d_o *= slope_o
        # dc += dh ⊙ o ⊙ (1 − tanh²c)
        multiply(tanh_c, tanh_c, out=scratch)
        subtract(1.0, scratch, out=scratch)
        scratch *= o
        scratch *= d_h_step
        d_c_step += scratch
        # d_f = dc ⊙ c_{t-1} ⊙ f(1 − f)
        multiply(d_c_step, c_prev, out=d_f)
        d_f *= slope_f
        # d_i = dc ⊙ g̃ ⊙ i(1 − i), g̃ the candidate after dropout
        multiply(d_c_step, g, out=d_i)
        if masks is not None:
            d_i *= masks[t]
        d_i *= slope_i
        # d_g = dc ⊙ i (⊙ mask) ⊙ (1 − g²)
        multiply(d_c_step, i, out=d_g)
        if masks is not None:
            d_g *= masks[t]
        multiply(g, g, out=scratch)
        subtract(1.0, scratch, out=scratch)
        d_g *= scratch
        d_gates[:, t, :] = step_d_gates
        # gradients into the previous state
        if valid is not None:
            finished = ~valid[t]
            multiply(d_c_step, f, out=scratch)
            copyto(scratch, d_c, where=finished)
            d_c[...] = scratch
            multiply(d_h, finished, out=scratch)
            matmul(recurrent_weights_t, step_d_gates, out=d_h)
            d_h += scratch
        else:
            multiply(d_c_step, f, out=d_c)
            matmul(recurrent_weights_t, step_d_gates, out=d_h)

    rows = steps * batch
    flat_d_gates = d_gates.reshape(4 * units, rows)
    d_weights = numpy.empty((4 * units, width), dtype)
    d_weights[:, 0] = flat_d_gates.sum(axis=1)
    # the rows' first column is the ones of the input projection: the bias's gradient is the sum above
    numpy.matmul(flat_d_gates, cache.inputs_and_h[:, :, 1:].reshape(rows, width - 1), out=d_weights[:, 1:])
    d_inputs = empty((rows, input_size), dtype)
    numpy.matmul(flat_d_gates.T, input_weights, out=d_inputs)
    return d_weights, d_inputs.reshape(steps, batch, input_size), numpy.ascontiguousarray(d_c.T), numpy.ascontiguousarray(d_h.T)
