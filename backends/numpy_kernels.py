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
- per-step products run as one batched matmul over row chunks of the weights where OpenBLAS's
  small-matrix kernels (no packing) then beat one packed call: `chunk_rows` measures it once per
  shape. Where the step's product runs unpacked, the forward takes the input projection into it:
  one [1, x_t, h_{t-1}]·Wᵀ a step, and no projection of all steps;
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
The layer-norm cell's NumPy kernels (`numpy_layer_norm`) are built from this module's pieces: the
row-block runners and the steps the two loops share (`cell_update`, `carry_state`, the gradient helpers).
"""
from __future__ import annotations

import functools
import itertools
import threading
import time
from typing import Any, Callable, NamedTuple

import numpy
from threadpoolctl import ThreadpoolController

from xlstm_backends.row_threads import row_blocks, run_on_row_blocks
from xlstm_backends.workspace import WORKSPACE

Array = numpy.ndarray  # in the shared helpers' hints
MaybeArray = numpy.ndarray | None

DESCRIPTION = "NumPy kernels (fused in-place ufuncs; pip install 'xlstm-array[fast]' for compiled ones)"
empty = WORKSPACE.empty  # large buffers reuse memory from earlier calls: no page faults

SIGMOID_GATES = 3  # f, i, o come first in the kernels' gate order; the candidate c is last
# The smallest row block worth a thread of its own, in cells of an [H, b] state: below it the
# GIL handoffs of a block's many short NumPy calls ate the second core's gain (README, Speed).
MIN_BLOCK_CELLS = 4096


# OpenBLAS's small-matrix kernels (SkylakeX builds) multiply without packing either operand when M·N·K is at most this
# (its sgemm/dgemm "small kernel permit"): the per-step product cut into row chunks below it can beat one packed call.
SMALL_PRODUCT = 1_000_000
# Row chunks, largest first, multiples of the small kernels' 16-row tiles. Not 16 itself: at the large bench shape
# (b = 64) 16-row chunks of W_h won in isolation now and then (700-985 µs against ~960) but made the loop 60 % slower.
CHUNK_ROWS = (256, 128, 64, 32)
CHUNKS_TRIED = 3  # the largest ones under SMALL_PRODUCT: which is fastest varies (b = 16: 128 rows forward, 32 back)
CHUNK_GAIN = 0.9  # a chunk must take at most this fraction of one call's time: a noisy measurement keeps one call


KERNEL_BLOCKS = (0, 1, 3, 2)  # the kernels' gate k is xlstm's gate block KERNEL_BLOCKS[k]: f, i, o, c from f, i, c, o


def kernel_order(units: int) -> numpy.ndarray:
    """Row indices taking xlstm's gate blocks f, i, c, o to the kernels' f, i, o, c."""
    return numpy.concatenate([numpy.arange(block * units, (block + 1) * units) for block in KERNEL_BLOCKS])


class Weights(NamedTuple):
    """The weights in the kernels' gate order f, i, o, c, and as the forward loop uses them."""

    ordered: numpy.ndarray | None  # W rows reordered, [4H, 1 + I + H]: what the backward pass needs
    whole: numpy.ndarray  # bias plus forget bias, input and recurrent weights; sigmoid rows halved, [4H, 1 + I + H]
    inputs: numpy.ndarray  # its bias and input columns, [4H, 1 + I] (a view)
    recurrent: numpy.ndarray  # its recurrent columns, contiguous [4H, H]


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


def _blas_threads() -> tuple[int, ...]:
    """Every BLAS library's thread count now (inside `on_row_blocks`: one each); read live, ~0.5 µs."""
    return tuple(library.num_threads for library in _blas().lib_controllers)


StepProduct = Callable[[Array, Array], None]  # product(x, out): out = W·x for one step's [K, b] operand, out [R, b]


def step_product(weights: Array, batch: int) -> StepProduct:
    """The loop's per-step product W·x ([R, K]·[K, b] → out [R, b], C-contiguous): one matmul, or one batched matmul
    over row chunks of W, whichever `chunk_rows` measured faster for this shape under the current BLAS threads."""
    return _chunked_product(weights, _step_chunk(weights, batch))


def fuses(weights: Array, batch: int) -> bool:
    """Whether a step's product [1, x_t, h_{t-1}]·Wᵀ ([4H, 1 + I + H]·[1 + I + H, b]) should take in the input
    projection: where it runs unpacked (small enough for one call, or faster in row chunks) it costs less than the
    recurrent product plus a strided add of a projection made for all steps at once."""
    return weights.shape[0] * weights.shape[1] * batch <= SMALL_PRODUCT or _step_chunk(weights, batch) < weights.shape[0]


def _step_chunk(weights: Array, batch: int) -> int:
    """The row chunk of `step_product` for W·x with x of `batch` columns (W's rows: one call)."""
    rows, depth = weights.shape
    if rows * depth * batch <= SMALL_PRODUCT:  # one call already takes the small kernel, where there is one
        return rows
    return chunk_rows(rows, depth, batch, weights.dtype.str, _blas_threads())


def _chunked_product(weights: Array, chunk: int) -> StepProduct:
    """product(x, out): out = weights·x in one matmul over [R // chunk, chunk, K] row chunks (plain when chunk = R)."""
    if chunk == weights.shape[0]:
        return functools.partial(numpy.matmul, weights)
    chunks = weights.reshape(-1, chunk, weights.shape[1])

    def product(x: Array, out: Array) -> None:
        if not out.flags.c_contiguous:  # reshape would copy, and the product would be lost
            raise ValueError("out must be C-contiguous")
        numpy.matmul(chunks, x, out=out.reshape(chunks.shape[0], chunk, out.shape[1]))

    return product


_CALIBRATION = threading.Lock()  # the row-block threads ask at once: one measures, the others wait for its answer


def chunk_rows(rows: int, depth: int, batch: int, dtype: str, blas_threads: tuple[int, ...]) -> int:
    """The row chunk for a per-step product [rows, depth]·[depth, batch]: `rows` (one call) unless one of the largest
    CHUNKS_TRIED chunks of CHUNK_ROWS that divide `rows` and fall under SMALL_PRODUCT measured ≥ 10 % faster (then
    the fastest); measured once per shape."""
    with _CALIBRATION:
        return _measured_chunk_rows(rows, depth, batch, dtype, blas_threads)


@functools.cache
def _measured_chunk_rows(rows: int, depth: int, batch: int, dtype: str, blas_threads: tuple[int, ...]) -> int:
    """`chunk_rows`, measured: whether chunks win depends on the CPU and on the kernels OpenBLAS picked for it at run
    time (SkylakeX builds have small-matrix kernels, others not), so 7 rounds over every candidate on random operands,
    best of each (a few ms at the medium bench shape). `blas_threads` is part of the key only."""
    chunks = [chunk for chunk in CHUNK_ROWS
              if chunk < rows and rows % chunk == 0 and chunk * depth * batch <= SMALL_PRODUCT][:CHUNKS_TRIED]
    if not chunks:
        return rows
    rng = numpy.random.default_rng(0)
    weights = rng.standard_normal((rows, depth)).astype(dtype)
    x, out = rng.standard_normal((depth, batch)).astype(dtype), numpy.empty((rows, batch), dtype)
    candidates = {chunk: _chunked_product(weights, chunk) for chunk in [rows, *chunks]}
    repeats = max(2, min(50, int(2e7 // (2 * rows * depth * batch))))  # ~0.1-0.2 ms a timing
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(7):
        for chunk, product in candidates.items():
            start = time.perf_counter()
            for _ in range(repeats):
                product(x, out)
            best[chunk] = min(best[chunk], time.perf_counter() - start)
    fastest = min(chunks, key=best.__getitem__)
    return fastest if best[fastest] <= CHUNK_GAIN * best[rows] else rows


def on_row_blocks(blocks: list[tuple[int, int]], work: Callable[[int, slice], Any]) -> list[Any]:
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


def feature_major(array: numpy.ndarray | None) -> numpy.ndarray | None:
    """[T, B, K] → contiguous [T, K, B] (None stays None): masks, lengths and output gradients as the
    feature-major loops read them."""
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
    whole = numpy.empty((4 * units, 1 + input_size + units), weights.dtype)
    for k, block in enumerate(KERNEL_BLOCKS):  # one pass: each gate block copied and scaled at once
        numpy.multiply(weights[block * units : (block + 1) * units], 0.5 if k < SIGMOID_GATES else 1.0,
                       out=whole[k * units : (k + 1) * units])
    whole[:units, 0] += 0.5 * forget_bias  # exact: halving is
    return Weights(weights[kernel_order(units)] if keep_for_backward else None, whole, whole[:, : 1 + input_size],
                   numpy.ascontiguousarray(whole[:, 1 + input_size :]))


def lstm_forward(inputs, weights, c0, h0, forget_bias: float, masks=None, valid=None, keep_for_backward=False):
    """Unroll the plain LSTM over time-major inputs [T, B, I], each row block on a thread of its own.

    Returns (outputs [T, B, H], c_T, h_T, cache or None). Without `keep_for_backward` the
    loop allocates nothing per step: O(B·H) buffers are reused across steps.
    """
    prepared = _forward_weights(weights, inputs.shape[2], c0.shape[1], forget_bias, keep_for_backward)
    min_rows = -(-MIN_BLOCK_CELLS // c0.shape[1])
    outputs, c, h, blocks, caches = forward_on_row_blocks(functools.partial(_forward_rows, prepared), inputs, c0, h0,
                                                          masks, valid, keep_for_backward, min_rows)
    return outputs, c, h, ForwardCache(prepared.ordered, blocks, caches) if keep_for_backward else None


def forward_on_row_blocks(forward_rows: Callable, inputs: Array, c0: Array, h0: Array, masks: MaybeArray,
                          valid: MaybeArray, keep_for_backward: bool, min_rows: int) -> tuple:
    """Run forward_rows(inputs, c0, h0, masks, valid, keep_for_backward) → (outputs, c_T, h_T, rows cache) on
    blocks of at least `min_rows` batch rows, side by side on threads: the rows of a recurrence never meet.

    Returns (outputs [T, B, H], c_T, h_T, the blocks, every block's rows cache).
    """
    steps, batch, _ = inputs.shape
    units = c0.shape[1]
    blocks = row_blocks(batch, min_rows)
    if len(blocks) == 1:
        outputs, c, h, rows_cache = forward_rows(inputs, c0, h0, masks, valid, keep_for_backward)
        return outputs, c, h, blocks, [rows_cache]
    # [T, B, H] over feature-major memory, like each block's own outputs: copying a block in is no transposition
    outputs = empty((steps, units, batch), c0.dtype).transpose(0, 2, 1)
    c, h = (numpy.empty((batch, units), c0.dtype) for _ in range(2))

    def work(_: int, rows: slice) -> Any:  # each thread copies its rows into the results
        outputs[:, rows], c[rows], h[rows], rows_cache = forward_rows(
            inputs[:, rows], c0[rows], h0[rows], _rows(masks, rows), _rows(valid, rows), keep_for_backward)
        return rows_cache

    return outputs, c, h, blocks, on_row_blocks(blocks, work)


def _forward_rows(weights: Weights, inputs, c0, h0, masks, valid, keep_for_backward: bool):
    """`lstm_forward`'s loop over one block of batch rows: (outputs, c_T, h_T, RowsCache or None).

    A step's pre-activations come from one product [1, x_t, h_{t-1}]·Wᵀ where that product runs unpacked (`fuses`),
    else from W_h·h_{t-1} plus that step's slice of one input projection of all steps, made before the loop.
    """
    steps, batch, input_size = inputs.shape
    units = c0.shape[1]
    dtype = weights.whole.dtype
    width = 1 + input_size + units
    masks, valid = feature_major(masks), feature_major(valid)
    fused = fuses(weights.whole, batch) and valid is None  # with lengths the carried h and the outputs differ
    if fused:
        # Every step's operand, feature-major: rows 1, x_t and h_{t-1}; step t writes h_t into operand t + 1.
        operands = empty((steps + 1, width, batch), dtype)
        operands[:, 0] = 1.0
        operands[:steps, 1 : 1 + input_size] = inputs.transpose(0, 2, 1)
        operands[0, 1 + input_size :] = h0.T
        product = step_product(weights.whole, batch)
        outputs = operands[1:, 1 + input_size :]
        inputs_and_h = projected_steps = None
    else:
        # Rows [1, x_t] (and h_{t-1}, filled in for a backward pass, whose weight gradient they are); all steps'
        # input projections, bias included, at once: [4H, 1 + I] · [1 + I, T·B], step t in columns t·B … t·B + B.
        inputs_and_h = empty((steps, batch, width if keep_for_backward else 1 + input_size), dtype)
        inputs_and_h[:, :, 0] = 1.0
        inputs_and_h[:, :, 1 : 1 + input_size] = inputs
        projected = empty((4 * units, steps * batch), dtype)
        numpy.matmul(weights.inputs, inputs_and_h[:, :, : 1 + input_size].reshape(steps * batch, 1 + input_size).T,
                     out=projected)
        projected_steps = [projected[:, t * batch : (t + 1) * batch] for t in range(steps)]
        product = step_product(weights.recurrent, batch)
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
    h = operands[0, 1 + input_size :] if fused else numpy.array(h0.T, dtype=dtype, order="C")  # h: updated in place
    scratch = numpy.empty((units, batch), dtype)
    tanh, multiply = numpy.tanh, numpy.multiply  # local: fewer lookups
    # h_{t-1} for the weight gradient: without lengths it is the previous output, copied after the loop
    carried_h_per_step = keep_for_backward and valid is not None
    # At the article's size (B = 1, H = 5) a step is ~5 µs of call overhead: the loop body is kept
    # to the NumPy calls themselves, every view it needs built before the loop where possible.
    for t, (a, sigmoids, f, i, o, g, c, c_new, tanh_c) in enumerate(views):
        if fused:
            product(operands[t], a)
        else:
            product(h, a)
            a += projected_steps[t]
        tanh(a, out=a)
        multiply(sigmoids, 0.5, out=sigmoids)
        sigmoids += 0.5
        if carried_h_per_step:
            inputs_and_h[t, :, 1 + input_size :] = h.T
        cell_update(f, i, g, None if masks is None else masks[t], c, c_new, scratch)
        tanh(c_new, out=tanh_c)
        h_new = outputs[t]
        multiply(o, tanh_c, out=h_new)
        h = carry_state(None if valid is None else valid[t], c, c_new, h, h_new)
    c = cells[steps] if keep_for_backward else cells[steps % 2]
    if keep_for_backward and fused:
        inputs_and_h = empty((steps, batch, width), dtype)
        numpy.copyto(inputs_and_h, operands[:steps].transpose(0, 2, 1))
    elif keep_for_backward and not carried_h_per_step and steps:
        inputs_and_h[0, :, 1 + input_size :] = h0
        inputs_and_h[1:, :, 1 + input_size :] = outputs[:-1].transpose(0, 2, 1)
    cache = None
    if keep_for_backward:
        cache = RowsCache(inputs_and_h, gates, cells, tanh_cells, masks, valid)
    # copies: h may be a view of the outputs, c of the cache
    return outputs.transpose(0, 2, 1), numpy.array(c.T, order="C"), numpy.array(h.T, order="C"), cache


def cell_update(f: Array, i: Array, g: Array, mask: MaybeArray, c: Array, c_new: Array, scratch: Array) -> None:
    """c_new = f ⊙ c_{t-1} + i ⊙ g̃, with g̃ = g ⊙ mask under dropout (feature-major [H, b]; `scratch` is
    overwritten)."""
    if mask is not None:
        numpy.multiply(g, mask, out=scratch)
        g = scratch
    numpy.multiply(i, g, out=c_new)  # i ⊙ g first: `scratch` may hold g
    numpy.multiply(f, c, out=scratch)
    c_new += scratch


def carry_state(valid: MaybeArray, c: Array, c_new: Array, h: Array, h_new: Array) -> Array:
    """The next step's h: h_new itself without lengths (no copy); with them ([1, b] booleans), finished rows keep
    their state (c_new and h are updated in place) and their outputs h_new become zero."""
    if valid is None:
        return h_new
    numpy.copyto(c_new, c, where=~valid)
    numpy.copyto(h, h_new, where=valid)
    h_new *= valid
    return h


def lstm_backward(cache: ForwardCache, d_outputs, d_c, d_h):
    """Backpropagate through the loop of `lstm_forward`, each row block on the thread it ran on
    forwards; the blocks' weight gradients are summed.

    Returns (d_weights in xlstm's layout [4H, 1 + I + H], d_inputs [T, B, I], d_c0, d_h0).
    """
    units = cache.weights.shape[0] // 4
    input_size = cache.weights.shape[1] - 1 - units
    recurrent_weights_t = numpy.ascontiguousarray(cache.weights[:, 1 + input_size :].T)  # [H, 4H]
    input_weights = cache.weights[:, 1 : 1 + input_size]
    backward_rows = functools.partial(_backward_rows, recurrent_weights_t=recurrent_weights_t,
                                      input_weights=input_weights)
    (d_weights,), d_inputs, d_c0, d_h0 = backward_on_row_blocks(backward_rows, cache.blocks, cache.rows, d_outputs,
                                                                d_c, d_h, input_size)
    unordered = numpy.empty_like(d_weights)
    unordered[kernel_order(units)] = d_weights
    return unordered, d_inputs, d_c0, d_h0


def backward_on_row_blocks(backward_rows: Callable, blocks: list[tuple[int, int]], caches: list,
                           d_outputs: MaybeArray, d_c: Array, d_h: Array, input_size: int) -> tuple:
    """Run backward_rows(rows cache, d_outputs, d_c, d_h) → (sums, d_inputs, d_c0, d_h0) on the row blocks the
    forward pass ran on, each on a thread again; `sums` is a tuple of arrays (weight gradients) summed over the blocks.

    Returns (sums, d_inputs [T, B, I], d_c0, d_h0).
    """
    if len(blocks) == 1:
        return backward_rows(caches[0], d_outputs, d_c, d_h)
    steps, batch = caches[0].gates.shape[0], d_c.shape[0]
    d_inputs = empty((steps, batch, input_size), d_c.dtype)
    d_c0, d_h0 = (numpy.empty((batch, d_c.shape[1]), d_c.dtype) for _ in range(2))

    def work(k: int, rows: slice) -> tuple:  # each thread copies its rows into the results
        sums, d_inputs[:, rows], d_c0[rows], d_h0[rows] = backward_rows(caches[k], _rows(d_outputs, rows), d_c[rows],
                                                                        d_h[rows])
        return sums

    sums, *others = on_row_blocks(blocks, work)
    for block_sums in others:
        for total, block_sum in zip(sums, block_sums):
            total += block_sum
    return sums, d_inputs, d_c0, d_h0


def _backward_rows(cache: RowsCache, d_outputs, d_c, d_h, *, recurrent_weights_t, input_weights):
    """`lstm_backward`'s loop over one block of batch rows: ((d_weights in the kernels' gate order,), d_inputs,
    d_c0, d_h0)."""
    steps, batch, width = cache.inputs_and_h.shape
    units = cache.cells.shape[1]
    dtype = cache.gates.dtype
    d_outputs = feature_major(d_outputs)
    d_gates = empty((4 * units, steps, batch), dtype)  # column block t is step t
    d_h = numpy.array(d_h.T, dtype=dtype, order="C")  # copies: both are updated in place
    d_c = numpy.array(d_c.T, dtype=dtype, order="C")
    d_h_step, d_c_step, scratch = (numpy.empty((units, batch), dtype) for _ in range(3))
    product_t = step_product(recurrent_weights_t, batch)
    step_d_gates = numpy.empty((4 * units, batch), dtype)
    d_f, d_i, d_o, d_g = (step_d_gates[k * units : (k + 1) * units] for k in range(4))
    slopes = numpy.empty((SIGMOID_GATES * units, batch), dtype)  # σ(1 − σ) of f, i, o: the sigmoids' slopes
    slope_f, slope_i, slope_o = (slopes[k * units : (k + 1) * units] for k in range(SIGMOID_GATES))
    masks, valid = cache.masks, cache.valid
    if valid is None:  # dc is updated in place: its new value is computed last, from d_c_step ⊙ f
        d_c_step = d_c
    for t in reversed(range(steps)):
        _, sigmoids, f, i, o, g, c_prev, _, tanh_c = _step_views(cache.gates[t], cache.cells[t], cache.cells[t + 1],
                                                                cache.tanh_cells[t], units)
        valid_t, mask = None if valid is None else valid[t], None if masks is None else masks[t]
        state_gradients(d_h, d_c, None if d_outputs is None else d_outputs[t], valid_t, d_h_step, d_c_step)
        numpy.subtract(1.0, sigmoids, out=slopes)
        slopes *= sigmoids
        output_gradients(d_h_step, o, tanh_c, slope_o, d_o, d_c_step, scratch)
        gate_gradients(d_c_step, c_prev, f, i, g, mask, slope_f, slope_i, d_f, d_i, d_g, scratch)
        d_gates[:, t, :] = step_d_gates
        previous_state_gradients(d_c_step, f, valid_t, product_t, step_d_gates, d_c, d_h, scratch)
    # the rows' first column is the input projection's ones: the bias's gradient is the gradients' sum
    d_weights, d_inputs = weight_and_input_gradients(d_gates, cache.inputs_and_h[:, :, 1:], input_weights, bias=True)
    return (d_weights,), d_inputs, numpy.ascontiguousarray(d_c.T), numpy.ascontiguousarray(d_h.T)


def state_gradients(d_h: Array, d_c: Array, d_output: MaybeArray, valid: MaybeArray, d_h_step: Array,
                    d_c_step: Array) -> None:
    """Into d_h_step and d_c_step: the gradients reaching step t's h_t (the carried one plus the output's) and c_t;
    zero on padded steps (`valid` [1, b] booleans or None; without it d_c_step may be d_c itself)."""
    if d_output is not None:
        numpy.add(d_h, d_output, out=d_h_step)
    else:
        d_h_step[...] = d_h
    if valid is not None:
        numpy.multiply(d_c, valid, out=d_c_step)
        d_h_step *= valid
    elif d_c_step is not d_c:
        d_c_step[...] = d_c


def output_gradients(d_h: Array, o: Array, tanh_c: Array, slope_o: Array, d_o: Array, d_c: Array,
                     scratch: Array) -> None:
    """Through h_t = o ⊙ tanh(c_t): d_o = dh ⊙ tanh(c) ⊙ o(1 − o) (`slope_o`), and
    d_c += dh ⊙ o ⊙ (1 − tanh²c)."""
    numpy.multiply(d_h, tanh_c, out=d_o)
    d_o *= slope_o
    numpy.multiply(tanh_c, tanh_c, out=scratch)
    numpy.subtract(1.0, scratch, out=scratch)
    scratch *= o
    scratch *= d_h
    d_c += scratch


def gate_gradients(d_c: Array, c_prev: Array, f: Array, i: Array, g: Array, mask: MaybeArray, slope_f: Array,
                   slope_i: Array, d_f: Array, d_i: Array, d_g: Array, scratch: Array) -> None:
    """Through c_t = f ⊙ c_{t-1} + i ⊙ g̃ (g̃ = g ⊙ mask) to the pre-activations of f, i and the candidate g;
    slope_f, slope_i are the sigmoids' slopes σ(1 − σ)."""
    numpy.multiply(d_c, c_prev, out=d_f)  # d_f = dc ⊙ c_{t-1} ⊙ f(1 − f)
    d_f *= slope_f
    numpy.multiply(d_c, g, out=d_i)  # d_i = dc ⊙ g̃ ⊙ i(1 − i)
    if mask is not None:
        d_i *= mask
    d_i *= slope_i
    numpy.multiply(d_c, i, out=d_g)  # d_g = dc ⊙ i (⊙ mask) ⊙ (1 − g²)
    if mask is not None:
        d_g *= mask
    numpy.multiply(g, g, out=scratch)
    numpy.subtract(1.0, scratch, out=scratch)
    d_g *= scratch


def previous_state_gradients(d_c_step: Array, f: Array, valid: MaybeArray, product_t: StepProduct,
                             d_gates: Array, d_c: Array, d_h: Array, scratch: Array) -> None:
    """In place, d_c and d_h become the gradients of c_{t-1} and h_{t-1}: d_c_step ⊙ f and W_hᵀ·d_gates ([4H, b],
    the pre-activations' gradients, by `product_t` from `step_product`); rows past their length (`valid` False) pass
    theirs through unchanged."""
    if valid is None:
        numpy.multiply(d_c_step, f, out=d_c)
        product_t(d_gates, d_h)
        return
    finished = ~valid
    numpy.multiply(d_c_step, f, out=scratch)
    numpy.copyto(scratch, d_c, where=finished)
    d_c[...] = scratch
    numpy.multiply(d_h, finished, out=scratch)
    product_t(d_gates, d_h)
    d_h += scratch


def weight_and_input_gradients(d_gates: Array, inputs_and_h: Array, input_weights: Array,
                               bias: bool) -> tuple[Array, Array]:
    """From every step's pre-activation gradients d_gates [4H, T, b] and the rows [x_t, h_{t-1}] ([T, b, I + H]):
    d_weights [4H, 1 + I + H] with one matmul (bias column: the gradients' sums, or zero without a bias) and
    d_inputs [T, b, I] with another."""
    steps, batch, width = inputs_and_h.shape
    rows, input_size = steps * batch, input_weights.shape[1]
    flat_d_gates = d_gates.reshape(d_gates.shape[0], rows)
    d_weights = numpy.empty((d_gates.shape[0], 1 + width), d_gates.dtype)
    if bias:
        d_weights[:, 0] = flat_d_gates.sum(axis=1)
    else:
        d_weights[:, 0] = 0
    numpy.matmul(flat_d_gates, inputs_and_h.reshape(rows, width), out=d_weights[:, 1:])
    d_inputs = empty((rows, input_size), d_gates.dtype)
    numpy.matmul(flat_d_gates.T, input_weights, out=d_inputs)
    return d_weights, d_inputs.reshape(steps, batch, input_size)
