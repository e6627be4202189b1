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

The kernels' source is `cuda_sources.py` (importable without CuPy: the tests compile it on the
CPU with g++ and for GPUs with NVRTC). Every buffer is allocated, and every kernel launched, on
the device of the inputs, whichever device is current.

No CUDA graph: capturing the loop records `cupy.matmul`, i.e. cuBLAS, which CuPy refuses during
stream capture (NotImplementedError, cupy/cupy#6290, through CuPy 14). README.md ("Running on a
GPU") gives the reasoning for keeping the plain loop.

Layer norm stays on the generic path. `import cupy` works without a GPU, so this module
imports everywhere; its kernels compile (NVRTC) on first use and CuPy caches them on disk.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import cupy

from xlstm_backends import cuda_sources


def _elementwise(source: cuda_sources.ElementwiseSource) -> cupy.ElementwiseKernel:
    """The CuPy kernel of one source (the preamble by keyword: the fifth positional is reduce_dims)."""
    return cupy.ElementwiseKernel(source.in_params, source.out_params, source.operation, source.name,
                                  preamble=source.preamble)


@functools.cache
def _forward_step_kernel(keep_gates: bool) -> cupy.ElementwiseKernel:
    """The fused pointwise forward step (created once per variant; CuPy compiles it once per dtype)."""
    return _elementwise(cuda_sources.FORWARD_STEP_KEEP_GATES if keep_gates else cuda_sources.FORWARD_STEP)


@functools.cache
def _backward_step_kernel() -> cupy.ElementwiseKernel:
    """The fused pointwise backward step; dh and dc are updated in place."""
    return _elementwise(cuda_sources.BACKWARD_STEP)


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
    """The arrays one forward time loop reads and writes, all allocated before it starts."""

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

    def fill(self, inputs, weights, c0, h0, forget_bias: float) -> None:
        """Write one call's inputs into the buffers (so the caller's arrays are never written)."""
        input_size = inputs.shape[2]
        _input_projection(inputs, weights, forget_bias, out=self.projected)
        cupy.copyto(self.recurrent_t, weights[:, 1 + input_size :].T)
        cupy.copyto(self.cells[0], c0)
        cupy.copyto(self.hidden[0], h0)


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
    """Unroll the plain LSTM over time-major inputs [T, B, I], on the GPU that holds them.

    Returns (outputs [T, B, H], c_T, h_T, cache or None), like `numpy_kernels.lstm_forward`.
    """
    steps, batch, _ = inputs.shape
    with inputs.device:  # buffers and launches where the inputs live, not on the current device
        loop = _Loop(steps, batch, c0.shape[1], weights.dtype, keep_for_backward, masks, valid)
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
    with cache.gates.device:  # on the GPU of the forward pass, not the current device
        return _backward(cache, d_outputs, d_c, d_h)


def _backward(cache: ForwardCache, d_outputs, d_c, d_h):
    """`lstm_backward`'s loop, on the current device."""
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
