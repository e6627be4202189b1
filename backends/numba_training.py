"""Compiled CPU kernels for the training step outside the LSTM (the optional `fast` extra: numba).

At the main job's size the generic array-API code spends its time on passes, not arithmetic:
softmax cross-entropy is about ten NumPy passes over the [2048, 96] logits (max, subtract,
exp, sum, log, a gather, a one-hot mask, its cast, two products), Adam about ten over the
flat parameter buffer, and NumPy's float32 `exp` runs scalar on CPUs without AVX-512. Here each is one
or two compiled loops:

- `softmax_cross_entropy`: per row the max, e^(z − max), their sum and the loss, in one pass;
  `softmax_cross_entropy_gradient`: e·(scale/Σ) − one-hot·scale, one pass.
- `adam`: m, v and the parameter update in one pass over the flat buffers, with the generic
  code's float operations in its order and dtype (no contraction into FMAs): the same bits.
- `scatter_add_rows`: the embedding gradient, each row added to its token's row in one loop.
- `output_layer_rows`: a row block of the fused output layer (`output_layer.py`) as one call: per
  chunk of rows the logits by the LSTM kernels' hand-tiled `_product`, the bias, the two softmax
  loops above and d_x by `_product` again. One call, not a dozen, keeps the row threads from
  queueing for the GIL between NumPy calls; `_product` runs these products at ~170 GFLOP/s a core
  against OpenBLAS's ~145 (h-dl).

The arrays the kernels hand out come from the workspace pool (`workspace.WORKSPACE`): no
fresh pages to fault in every step. A row's max uses LLVM's IEEE `maximum` (NaN-propagating,
like NumPy's), which vectorises where Python's `max` does not.

float32's exp is Cephes' `expf` (a range reduction by ln 2, a degree-6 polynomial and 2ⁿ
written into the exponent bits), which the compiler vectorises: within 2 units in the last
place (tests/test_training_kernels.py). float64 uses `math.exp`, so float64 results equal
the generic code's to rounding.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import llvmlite.ir
import numba
import numpy
from numba.core import types
from numba.extending import intrinsic, overload

from xlstm_backends.numba_kernels import _product, _scatter_add_loop, packed_columns
from xlstm_backends.workspace import WORKSPACE

DESCRIPTION = f"compiled kernels (numba {numba.__version__})"
LOSS_JIT = {"error_model": "numpy", "nogil": True, "cache": True, "fastmath": {"contract", "arcp", "nsz"}}
# Reassociation lets a row's sum and max vectorise; only those two helpers may reorder (elsewhere
# it turned log Σ − (z_label − max) into (log Σ − z_label) + max, losing a small loss to rounding).
REDUCE_JIT = {**LOSS_JIT, "fastmath": LOSS_JIT["fastmath"] | {"reassoc"}}
EXACT_JIT = {"error_model": "numpy", "nogil": True, "cache": True}  # IEEE order of operations: same bits

# Cephes expf: x = n·ln 2 + r with ln 2 split in two (C1 exact in float32), e^r by a polynomial.
EXP_LOW, EXP_HIGH = -87.0, 88.0  # 2ⁿ stays a normal float32 (n in [-126, 127])
LOG2E = 1.44269504088896341
LN2_HIGH, LN2_LOW = 0.693359375, -2.12194440e-4
EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE-754 bits are the int32 `bits` (a bitcast, no conversion)."""
    if not isinstance(bits, types.Integer) or bits.bitwidth != 32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvmlite.ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _maximum(typingctx, a, b):
    """IEEE maximum of two floats of one type, NaN if either is (LLVM's `llvm.maximum`): unlike
    Python's `max`, a reduction over it vectorises (a row's max in 0.033 ms instead of 0.076)."""
    if not isinstance(a, types.Float) or a != b:
        return None

    def codegen(context, builder, signature, args):
        kind = args[0].type
        function = builder.module.declare_intrinsic("llvm.maximum", [kind], llvmlite.ir.FunctionType(kind, [kind, kind]))
        return builder.call(function, args)

    return a(a, b), codegen


def exp(x):  # noqa: D103 - replaced inside compiled code by the overload below
    return math.exp(x)


@overload(exp, inline="always", jit_options={"fastmath": LOSS_JIT["fastmath"]})
def _exp_for(x):
    """float32: Cephes' vectorisable expf, clamped to [-87, 88]; float64 and others: math.exp."""
    if isinstance(x, types.Float) and x.bitwidth == 32:
        low, high, log2e, half = (numpy.float32(v) for v in (EXP_LOW, EXP_HIGH, LOG2E, 0.5))
        ln2_high, ln2_low, one = numpy.float32(LN2_HIGH), numpy.float32(LN2_LOW), numpy.float32(1.0)
        p0, p1, p2, p3, p4, p5 = (numpy.float32(c) for c in EXP_P)

        def cephes(x):
            x = min(max(x, low), high)
            n = numpy.floor(x * log2e + half)
            r = x - n * ln2_high - n * ln2_low
            poly = (((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5) * (r * r) + r + one
            return poly * _float32_from_bits(numpy.int32((numpy.int32(n) + 127) << 23))

        return cephes
    return lambda x: math.exp(x)


@numba.njit(**REDUCE_JIT)
def _row_max(row):
    """The largest entry of a row, NaN if any is."""
    largest = row[0]
    for k in range(1, row.shape[0]):
        largest = _maximum(largest, row[k])
    return largest


@numba.njit(**REDUCE_JIT)
def _row_sum(row):
    """Σ of a row, in the order the vectoriser picks."""
    total = row[0] - row[0]  # a zero of the row's dtype
    for k in range(row.shape[0]):
        total += row[k]
    return total


@numba.njit(**LOSS_JIT)
def _softmax_rows(logits, labels, losses, exps, sums):
    """Per row of logits [N, V]: exps = e^(z − max), sums = Σ exps, losses = log Σ − (z_label − max)."""
    for i in range(logits.shape[0]):
        row, e = logits[i], exps[i]
        largest = _row_max(row)
        for k in range(row.shape[0]):
            e[k] = exp(row[k] - largest)
        sums[i] = _row_sum(e)
        losses[i] = math.log(sums[i]) - (row[labels[i]] - largest)


@numba.njit(**LOSS_JIT)
def _gradient_rows(exps, sums, labels, row_scale, gradient):
    """gradient = exps · (row_scale / sums) − one-hot(labels) · row_scale, row by row."""
    for i in range(exps.shape[0]):
        factor, e, g = row_scale[i] / sums[i], exps[i], gradient[i]
        for k in range(e.shape[0]):
            g[k] = e[k] * factor
        g[labels[i]] -= row_scale[i]


def _rows(x: numpy.ndarray, width: int) -> numpy.ndarray:
    """x as a C-contiguous [N, width] array (a view when it already is one)."""
    return numpy.ascontiguousarray(x.reshape(-1, width))


def softmax_cross_entropy(logits: numpy.ndarray, labels: numpy.ndarray) -> tuple[Any, Any, Any]:
    """(losses, exps, sums) of checked logits [..., V] and labels [...] (see xlstm/losses.py)."""
    classes = logits.shape[-1]
    flat = _rows(logits, classes)
    losses = numpy.empty(flat.shape[0], logits.dtype)
    exps, sums = WORKSPACE.empty(flat.shape, flat.dtype), numpy.empty_like(losses)
    _softmax_rows(flat, labels.reshape(-1), losses, exps, sums)
    return losses.reshape(labels.shape), exps.reshape(logits.shape), sums.reshape(labels.shape)


def softmax_cross_entropy_gradient(exps: numpy.ndarray, sums: numpy.ndarray, labels: numpy.ndarray,
                                   row_scale: numpy.ndarray) -> numpy.ndarray:
    """d Σ row_scale·loss / d logits from what `softmax_cross_entropy` returned."""
    flat = exps.reshape(-1, exps.shape[-1])
    gradient = WORKSPACE.empty(flat.shape, flat.dtype)
    _gradient_rows(flat, sums.reshape(-1), labels.reshape(-1), _rows(row_scale, 1)[:, 0], gradient)
    return gradient.reshape(exps.shape)


@numba.njit(**LOSS_JIT)
def _output_rows(x, packed, rest, packed_t, rest_t, bias, labels, scales, logits, exps, sums, losses, gradient,
                 d_x, start, stop):
    """Rows [start, stop) of the output layer, a chunk of logits.shape[0] rows at a time: logits = x·kernel + bias,
    losses, gradient = d Σ scale·loss / d logits, d_x = gradient·kernelᵀ; (packed, rest) and (packed_t, rest_t)
    are `packed_columns` of the kernel and of its transpose."""
    chunk = logits.shape[0]
    for first in range(start, stop, chunk):
        last = min(first + chunk, stop)
        rows, chunk_labels, chunk_gradient = last - first, labels[first:last], gradient[first:last]
        _product(x[first:last], packed, rest, logits[:rows])
        for i in range(rows):
            row = logits[i]
            for k in range(row.shape[0]):
                row[k] += bias[k]
        _softmax_rows(logits[:rows], chunk_labels, losses[first:last], exps[:rows], sums[:rows])
        _gradient_rows(exps[:rows], sums[:rows], chunk_labels, scales[:rows], chunk_gradient)
        _product(chunk_gradient, packed_t, rest_t, d_x[first:last])


def output_layer_rows(x: numpy.ndarray, kernel: numpy.ndarray, bias: numpy.ndarray, labels: numpy.ndarray,
                      row_scale: float, gradient: numpy.ndarray, d_x: numpy.ndarray, losses: numpy.ndarray,
                      chunk: int) -> Callable[[int, int], None]:
    """rows(start, stop), which fills gradient [N, V], d_x [N, H] and losses [N] for rows [start, stop) of
    x [N, H] (C-contiguous) against labels [N], `chunk` rows at a time (see `output_layer.py`)."""
    packed, packed_t = packed_columns(kernel), packed_columns(kernel.T)  # the transpose is read once, not copied
    classes, dtype = kernel.shape[1], x.dtype

    def rows(start: int, stop: int) -> None:
        size = max(1, min(chunk, stop - start))
        logits, exps = numpy.empty((size, classes), dtype), numpy.empty((size, classes), dtype)
        _output_rows(x, *packed, *packed_t, bias, labels, numpy.full(size, row_scale, dtype), logits,
                     exps, numpy.empty(size, dtype), losses, gradient, d_x, start, stop)

    return rows


@numba.njit(**EXACT_JIT)
def _adam_loop(param, grad, exp_avg, exp_avg_sq, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size,
               bias_correction2_sqrt, epsilon, decay, new_param, new_exp_avg, new_exp_avg_sq):
    """xlstm.optim.Adam's update, element by element, in its operations' order."""
    for k in range(param.shape[0]):
        g = grad[k]
        m = beta1 * exp_avg[k] + one_minus_beta1 * g
        v = g * g * one_minus_beta2 + beta2 * exp_avg_sq[k]
        new_exp_avg[k], new_exp_avg_sq[k] = m, v
        new_param[k] = param[k] * decay - m / (numpy.sqrt(v) / bias_correction2_sqrt + epsilon) * step_size


def adam(param: numpy.ndarray, grad: numpy.ndarray, exp_avg: numpy.ndarray, exp_avg_sq: numpy.ndarray, *,
         beta1: float, beta2: float, epsilon: float, step_size: float, bias_correction2_sqrt: float,
         decay: float) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """(new param, new exp_avg, new exp_avg_sq) of flat buffers: Adam's step, AdamW's with decay ≠ 1.

    The Python floats become the arrays' dtype first, as NumPy casts them in the generic code.
    """
    cast = param.dtype.type
    out = tuple(WORKSPACE.empty(param.shape, param.dtype) for _ in range(3))
    _adam_loop(param, grad, exp_avg, exp_avg_sq, cast(beta1), cast(1.0 - beta1), cast(beta2), cast(1.0 - beta2),
               cast(step_size), cast(bias_correction2_sqrt), cast(epsilon), cast(decay), *out)
    return out


def scatter_add_rows(num_rows: int, ids: numpy.ndarray, values: numpy.ndarray) -> numpy.ndarray:
    """A [num_rows, E] array whose row r sums the rows values[k] with ids[k] == r (one compiled loop)."""
    total = numpy.zeros((num_rows, values.shape[1]), dtype=values.dtype)
    _scatter_add_loop(ids, numpy.ascontiguousarray(values), total)
    return total
