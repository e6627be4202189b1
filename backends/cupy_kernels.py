"""Fused CuPy kernels for the plain LSTM's time loop, forward and backward.

The GPU counterpart of `backends/numpy_kernels.py`: the same two functions, the same
contract, the same numbers as xlstm's generic array-API code. The generic code launches
dozens of small GPU kernels per step (each sigmoid alone is several, then the products,
sums and `where`s), each allocating its result; at LSTM sizes a step costs those launches
more than arithmetic. Here a step is two launches into buffers allocated once per call:

1. the recurrent product h_{t-1}·W_hᵀ, one cuBLAS GEMM (`cupy.matmul(..., out=)`);
2. one `cupy.ElementwiseKernel`, one thread per unit (b, j), that adds the step's input
   projection, activates the four gates, updates c and h, and applies the dropout mask
   and the sequence lengths.

The backward step is likewise one ElementwiseKernel and one GEMM. Around the loops, as on
NumPy: the input projection of all steps is one matmul before the loop, and every weight
gradient is one matmul after it, over the rows [x_t, h_{t-1}] saved by the forward pass.

Layout: time-major and batch-major like the rest of xlstm; the gates of a step are
[B, 4H] in xlstm's order f, i, c, o. A thread reads its four gates at their offsets, so
unlike the NumPy kernels (which reorder the rows to get one contiguous sigmoid block) the
weights are used as given.

An inference loop (no backward pass) of at least `GRAPH_MIN_STEPS` steps whose shape comes
back is captured once as a CUDA graph and then replayed: see `_graphed_forward`.

Layer norm stays on the generic path. `import cupy` works without a GPU, so this module
imports everywhere; its kernels compile (NVRTC) on first use and CuPy caches them on disk.
"""
from __future__ import annotations

import collections
import functools
import threading
from typing import Any, NamedTuple

import cupy

# σ(x) = ½·tanh(½x) + ½: one transcendental, and it never overflows.
_PREAMBLE = r"""
template <typename F> __device__ F sigmoid(F x) { return F(0.5) * tanh(F(0.5) * x) + F(0.5); }
"""

# A thread handles unit (b, j) of the [B, H] state, i = b·H + j; gate k ∈ {f, i, c, o} of that
# unit sits at row + k·H of the step's [B, 4H] arrays.
_UNIT_ROW = r"""
const ptrdiff_t unit = i;  // i may be a 32-bit index; 4*B*H need not fit one
const ptrdiff_t row = (unit / units) * 4 * units + unit % units;
"""

_FORWARD_STEP = _UNIT_ROW + r"""
const T f = sigmoid(recurrent[row] + projected[row]);
const T in_gate = sigmoid(recurrent[row + units] + projected[row + units]);
const T g = tanh(recurrent[row + 2 * units] + projected[row + 2 * units]);
const T o = sigmoid(recurrent[row + 3 * units] + projected[row + 3 * units]);
const T c = f * c_prev + in_gate * (g * mask);
const T h = o * tanh(c);
// Finished rows (valid false) keep their state and output zero. In inference c_new is c_prev
// and h_new is h_prev (one buffer updated in place): each is read before it is written.
c_new = valid ? c : c_prev;
h_new = valid ? h : h_prev;
output = valid ? h : T(0);
"""

# Training keeps the activated gates (g before dropout) for the backward pass.
_KEEP_GATES = r"""
gates[row] = f;
gates[row + units] = in_gate;
gates[row + 2 * units] = g;
gates[row + 3 * units] = o;
"""

# dh and dc arrive as the gradients w.r.t. h_t and c_t (dh without this step's output
# gradient) and leave as those w.r.t. h_{t-1} and c_{t-1}; the GEMM after the kernel adds
# d_a·W_h to dh.
_BACKWARD_STEP = _UNIT_ROW + r"""
const T f = gates[row];
const T in_gate = gates[row + units];
const T g = gates[row + 2 * units];
const T o = gates[row + 3 * units];
const T dh_t = valid ? dh + d_output : T(0);  // padded steps take no gradient...
const T tanh_c = tanh(c);
const T dc_t = (valid ? dc : T(0)) + dh_t * o * (T(1) - tanh_c * tanh_c);
d_gates[row] = dc_t * c_prev * f * (T(1) - f);
d_gates[row + units] = dc_t * (g * mask) * in_gate * (T(1) - in_gate);
d_gates[row + 2 * units] = dc_t * in_gate * mask * (T(1) - g * g);
d_gates[row + 3 * units] = dh_t * tanh_c * o * (T(1) - o);
dc = valid ? dc_t * f : dc;  // ...and pass the state's gradient straight through
dh = valid ? T(0) : dh;
"""


@functools.cache
def _forward_step_kernel(keep_gates: bool) -> cupy.ElementwiseKernel:
    """The fused pointwise forward step (created once per variant; CuPy compiles it once per dtype)."""
    return cupy.ElementwiseKernel(
        "raw T recurrent, raw T projected, T c_prev, T h_prev, T mask, bool valid, int32 units",
        "T c_new, T h_new, T output" + (", raw T gates" if keep_gates else ""),
        _FORWARD_STEP + (_KEEP_GATES if keep_gates else ""),
        "xlstm_lstm_forward_step" + ("_keep_gates" if keep_gates else ""),
        preamble=_PREAMBLE,
    )


@functools.cache
def _backward_step_kernel() -> cupy.ElementwiseKernel:
    """The fused pointwise backward step; dh and dc are updated in place."""
    return cupy.ElementwiseKernel(
        "raw T gates, T c_prev, T c, T d_output, T mask, bool valid, int32 units",
        "T dh, T dc, raw T d_gates",
        _BACKWARD_STEP,
        "xlstm_lstm_backward_step",
    )


class ForwardCache(NamedTuple):
    """What the backward pass needs from the forward pass (batch-major, xlstm's gate order)."""

    weights: Any  # W as given, [4H, 1 + I + H]
    inputs_and_h: Any  # [T, B, I + H]: x_t and h_{t-1}, the rows of the weight gradient
    gates: Any  # activated f, i, candidate g (before dropout), o: [T, B, 4H]
    cells: Any  # c_{t-1} for every step, then c_T: [T + 1, B, H]
    masks: Any  # dropout masks [T, B, H], or ones broadcast to that shape
    valid: Any  # [T, B, 1] booleans, or True broadcast to that shape


def _constant(value, shape, dtype) -> cupy.ndarray:
    """`value` broadcast to `shape` without copies: stands in for absent masks, lengths, gradients."""
    return cupy.broadcast_to(cupy.full((), value, dtype), shape)


def _input_projection(inputs, weights, forget_bias: float, out) -> cupy.ndarray:
    """x_t·W_xᵀ + b for every step at once, forget_bias added to b_f: [T, B, I] → out [T, B, 4H]."""
    steps, batch, input_size = inputs.shape
    units = weights.shape[0] // 4
    bias = weights[:, 0].copy()  # [4H]
    bias[:units] += forget_bias
    flat = out.reshape(steps * batch, 4 * units)  # a view: out is contiguous
    cupy.matmul(inputs.reshape(steps * batch, input_size), weights[:, 1 : 1 + input_size].T, out=flat)
    flat += bias
    return out


class _Loop:
    """The arrays one forward time loop reads and writes, all allocated before it starts.

    A CUDA graph records the addresses of these arrays, so a captured loop owns its _Loop and
    each replay first copies the call's inputs into it (`fill`).
    """

    def __init__(self, steps, batch, units, dtype, keep_for_backward, masks=None, valid=None):
        self.projected = cupy.empty((steps, batch, 4 * units), dtype)  # x_t·W_xᵀ + b
        self.recurrent_t = cupy.empty((units, 4 * units), dtype)  # W_hᵀ, contiguous for the GEMM
        self.recurrent = cupy.empty((batch, 4 * units), dtype)  # h_{t-1}·W_hᵀ of the current step
        kept = steps + 1 if keep_for_backward else 1  # every step's state, or one updated in place
        self.cells = cupy.empty((kept, batch, units), dtype)  # c
        self.hidden = cupy.empty((kept, batch, units), dtype)  # h
        self.outputs = cupy.empty((steps, batch, units), dtype)
        self.gates = cupy.empty((steps, batch, 4 * units), dtype) if keep_for_backward else None
        self.masks = _constant(1.0, (steps, batch, units), dtype) if masks is None else masks  # [T, B, H]
        self.valid = _constant(True, (steps, batch, 1), bool) if valid is None else valid  # [T, B, 1]

    def fill(self, inputs, weights, c0, h0, forget_bias: float, masks=None, valid=None) -> None:
        """Write one call's inputs into the buffers (so the caller's arrays are never written).

        `masks` and `valid` are copied only when given: for a graph, whose _Loop owns buffers
        for them; a plain loop reads the caller's arrays directly.
        """
        input_size = inputs.shape[2]
        _input_projection(inputs, weights, forget_bias, out=self.projected)
        cupy.copyto(self.recurrent_t, weights[:, 1 + input_size :].T)
        cupy.copyto(self.cells[0], c0)
        cupy.copyto(self.hidden[0], h0)
        for source, buffer in ((masks, self.masks), (valid, self.valid)):
            if source is not None:
                cupy.copyto(buffer, source)


def _run_steps(loop: _Loop) -> None:
    """The time loop proper: per step one GEMM and one fused elementwise kernel, nothing allocated."""
    keep = loop.gates is not None
    step = _forward_step_kernel(keep)
    units = loop.recurrent_t.shape[0]
    c, h = loop.cells[0], loop.hidden[0]  # [B, H] each
    for t in range(loop.outputs.shape[0]):
        # Training keeps every state (c_{t-1} in cells[t], c_t in cells[t + 1]); inference
        # passes the same array objects as old and new state, updated in place.
        c_new, h_new = (loop.cells[t + 1], loop.hidden[t + 1]) if keep else (c, h)
        cupy.matmul(h, loop.recurrent_t, out=loop.recurrent)  # [B, H]·[H, 4H]
        step(loop.recurrent, loop.projected[t], c, h, loop.masks[t], loop.valid[t], units,
             c_new, h_new, loop.outputs[t], *((loop.gates[t],) if keep else ()))
        c, h = c_new, h_new


def lstm_forward(inputs, weights, c0, h0, forget_bias: float, masks=None, valid=None, keep_for_backward=False):
    """Unroll the plain LSTM over time-major inputs [T, B, I].

    Returns (outputs [T, B, H], c_T, h_T, cache or None), like `numpy_kernels.lstm_forward`.
    """
    steps, batch, _ = inputs.shape
    units = c0.shape[1]
    if not keep_for_backward and steps >= GRAPH_MIN_STEPS:
        replayed = _graphed_forward(inputs, weights, c0, h0, forget_bias, masks, valid)
        if replayed is not None:
            return replayed
    loop = _Loop(steps, batch, units, weights.dtype, keep_for_backward, masks, valid)
    loop.fill(inputs, weights, c0, h0, forget_bias)
    _run_steps(loop)
    cache = None
    if keep_for_backward:
        inputs_and_h = cupy.concatenate([inputs, loop.hidden[:-1]], axis=2)  # [T, B, I + H]
        cache = ForwardCache(weights, inputs_and_h, loop.gates, loop.cells, loop.masks, loop.valid)
    # copies: in training c_T and h_T are views of the cache
    return loop.outputs, loop.cells[-1].copy(), loop.hidden[-1].copy(), cache


def lstm_backward(cache: ForwardCache, d_outputs, d_c, d_h):
    """Backpropagate through `lstm_forward`'s loop: (d_weights [4H, 1 + I + H], d_inputs [T, B, I], d_c0, d_h0)."""
    from cupy import cublas  # it loads the CUDA libraries, which a machine without a GPU may lack

    dtype, units = cache.gates.dtype, cache.weights.shape[0] // 4
    steps, batch, width = cache.inputs_and_h.shape  # width = I + H
    input_size = width - units
    recurrent_weights = cupy.ascontiguousarray(cache.weights[:, 1 + input_size :])  # W_h [4H, H]
    if d_outputs is None:
        d_outputs = _constant(0.0, (steps, batch, units), dtype)
    d_h = cupy.array(d_h, dtype=dtype, order="C")  # copies: both are updated in place
    d_c = cupy.array(d_c, dtype=dtype, order="C")
    d_gates = cupy.empty((steps, batch, 4 * units), dtype)  # the pre-activations' gradients d_a
    step = _backward_step_kernel()
    for t in reversed(range(steps)):
        step(cache.gates[t], cache.cells[t], cache.cells[t + 1], d_outputs[t], cache.masks[t], cache.valid[t],
             units, d_h, d_c, d_gates[t])
        cublas.gemm("N", "N", d_gates[t], recurrent_weights, out=d_h, beta=1.0)  # dh ← d_a·W_h + dh

    rows = steps * batch
    flat_d_gates = d_gates.reshape(rows, 4 * units)  # one row per (t, b)
    d_bias = flat_d_gates.sum(axis=0)[:, None]  # [4H, 1]
    d_input_and_recurrent = flat_d_gates.T @ cache.inputs_and_h.reshape(rows, width)  # [4H, I + H]
    d_weights = cupy.concatenate([d_bias, d_input_and_recurrent], axis=1)
    d_inputs = (flat_d_gates @ cache.weights[:, 1 : 1 + input_size]).reshape(steps, batch, input_size)
    return d_weights, d_inputs, d_c, d_h


# CUDA graphs for the inference loop.
#
# Replaying a captured graph costs one launch instead of 2·T, but capturing costs what running
# the loop costs (the same Python and launch calls, with the GPU idle meanwhile) plus the
# graph's instantiation, so a graph captured for one call never pays. It pays when it is
# replayed: the first inference call of a shape runs the plain loop and is remembered; the
# second runs it on buffers the graph will own (which also compiles and loads every kernel
# before capture) and captures the loop; from the third on, a call copies its inputs into
# those buffers, replays the graph and copies the outputs out. Training (keep_for_backward)
# always runs the plain loop.

GRAPH_MIN_STEPS = 16
"""Shortest inference loop worth a graph: shorter loops save fewer launches than the copies in
and out of the graph's buffers cost (an estimate, not yet measured on a GPU)."""

GRAPH_CACHE_SIZE = 8
"""Shapes remembered at most (each captured one holds its buffers, O(T·B·H), on the GPU)."""

_SEEN_ONCE = "seen once"  # a shape's first call: plain loop
_NO_GRAPH = "no graph"  # capture failed (HIP, an old CUDA): plain loop from now on
_graphs: collections.OrderedDict = collections.OrderedDict()  # key → marker or _GraphedLoop, oldest first
_graphs_lock = threading.Lock()  # a _GraphedLoop's buffers serve one call at a time


class _GraphedLoop:
    """A captured inference loop: the graph, the buffers it reads and writes, and an event
    recorded after its latest outputs were copied out (the next call waits for it before
    overwriting the buffers, whichever stream it runs on)."""

    def __init__(self, loop: _Loop):
        self.loop = loop
        self.graph = None
        self.done = None


def _capture(loop: _Loop):
    """Record `_run_steps(loop)` as a CUDA graph without running it; None where capture fails."""
    stream = cupy.cuda.Stream(non_blocking=True)  # capture needs a stream other than the legacy default
    try:
        with stream:
            stream.begin_capture()
            try:
                _run_steps(loop)
            finally:
                graph = stream.end_capture()
    except RuntimeError:  # CUDA, cuBLAS or CuPy refusing capture: the plain loop serves this shape
        return None
    return graph


def _remember(key, value) -> None:
    """Store `value` as the most recent entry, dropping the oldest beyond GRAPH_CACHE_SIZE."""
    _graphs[key] = value
    while len(_graphs) > GRAPH_CACHE_SIZE:
        _, dropped = _graphs.popitem(last=False)
        if isinstance(dropped, _GraphedLoop) and dropped.done is not None:
            dropped.done.synchronize()  # its buffers go back to the pool: no replay may still use them


def _graphed_forward(inputs, weights, c0, h0, forget_bias, masks, valid):
    """An inference forward through this shape's CUDA graph; None where the plain loop should run.

    The result is the same tuple as `lstm_forward`'s, with fresh arrays: the graph's buffers
    are overwritten by the next call.
    """
    steps, batch, _ = inputs.shape
    units, dtype = c0.shape[1], weights.dtype
    key = (cupy.cuda.Device().id, dtype, steps, batch, units, masks is None, valid is None)
    with _graphs_lock:
        entry = _graphs.pop(key, None)
        if entry is None or entry is _NO_GRAPH:
            _remember(key, _SEEN_ONCE if entry is None else _NO_GRAPH)
            return None
        if entry is _SEEN_ONCE:  # buffers of its own for everything the graph reads
            entry = _GraphedLoop(_Loop(steps, batch, units, dtype, False,
                                       None if masks is None else cupy.empty(masks.shape, masks.dtype),
                                       None if valid is None else cupy.empty(valid.shape, valid.dtype)))
        stream = cupy.cuda.get_current_stream()
        if entry.done is not None:
            stream.wait_event(entry.done)
        loop = entry.loop
        loop.fill(inputs, weights, c0, h0, forget_bias, masks, valid)
        if entry.graph is None:
            _run_steps(loop)  # this call's result, and every kernel loaded before the capture
            entry.graph = _capture(loop)
        else:
            entry.graph.launch(stream)
        result = loop.outputs.copy(), loop.cells[0].copy(), loop.hidden[0].copy(), None
        entry.done = stream.record()
        _remember(key, entry if entry.graph is not None else _NO_GRAPH)
    return result
