"""Softmax cross-entropy for the default install (NumPy only): the generic formulas in fewer passes.

The generic array-API code makes a new array at every step and builds the gradient's one-hot
term as a [N, V] boolean mask, cast and multiplied; here the exponentials overwrite the shifted
logits (`out=`), the labels' entries are one fancy-index gather, and the gradient subtracts the
row scales at the labels' positions only. Same operations per element, so the same numbers.
`output_layer_rows` runs them, with `out=`, inside the fused output layer (`output_layer.py`).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy

DESCRIPTION = "NumPy kernels (in-place ufuncs)"


def softmax_cross_entropy(logits: numpy.ndarray, labels: numpy.ndarray,
                          out: numpy.ndarray | None = None) -> tuple[Any, Any, Any]:
    """(losses, exps, sums) of checked logits [..., V] and labels [...] (see xlstm/losses.py); the exps
    go into `out` (a C-contiguous array shaped like logits, which may be logits itself) when given."""
    flat = logits.reshape(-1, logits.shape[-1])
    rows = numpy.arange(flat.shape[0])
    exps = numpy.subtract(flat, numpy.max(flat, axis=1, keepdims=True),
                          out=None if out is None else out.reshape(flat.shape))
    picked = exps[rows, labels.reshape(-1)]  # z_label − max, before the exps overwrite it
    numpy.exp(exps, out=exps)
    sums = numpy.sum(exps, axis=1)
    losses = numpy.log(sums)
    losses -= picked
    return losses.reshape(labels.shape), exps.reshape(logits.shape), sums.reshape(labels.shape)


def softmax_cross_entropy_gradient(exps: numpy.ndarray, sums: numpy.ndarray, labels: numpy.ndarray,
                                   row_scale: numpy.ndarray, out: numpy.ndarray | None = None) -> numpy.ndarray:
    """exps · (row_scale / sums) − one-hot(labels) · row_scale, d Σ row_scale·loss / d logits; into `out`
    (C-contiguous, shaped like exps, which may be exps itself) when given."""
    flat = exps.reshape(-1, exps.shape[-1])
    scale = numpy.reshape(row_scale, -1)
    gradient = numpy.multiply(flat, (scale / sums.reshape(-1))[:, None],
                              out=None if out is None else out.reshape(flat.shape))
    gradient[numpy.arange(flat.shape[0]), labels.reshape(-1)] -= scale
    return gradient.reshape(exps.shape)


def output_layer_rows(x: numpy.ndarray, kernel: numpy.ndarray, bias: numpy.ndarray, labels: numpy.ndarray,
                      row_scale: float, gradient: numpy.ndarray, d_x: numpy.ndarray, losses: numpy.ndarray,
                      chunk: int) -> Callable[[int, int], None]:
    """rows(start, stop), which fills gradient [N, V], d_x [N, H] and losses [N] for rows [start, stop) of
    x [N, H] (C-contiguous) against labels [N], `chunk` rows at a time (see `output_layer.py`)."""
    classes, dtype = kernel.shape[1], x.dtype

    def rows(start: int, stop: int) -> None:
        logits = numpy.empty((max(1, min(chunk, stop - start)), classes), dtype)
        for first in range(start, stop, chunk):
            last = min(first + chunk, stop)
            chunk_logits, chunk_labels = logits[: last - first], labels[first:last]
            chunk_gradient = gradient[first:last]
            numpy.matmul(x[first:last], kernel, out=chunk_logits)
            chunk_logits += bias
            # the exps go into the gradient's rows and the gradient then overwrites them in place
            losses[first:last], _, sums = softmax_cross_entropy(chunk_logits, chunk_labels, out=chunk_gradient)
            softmax_cross_entropy_gradient(chunk_gradient, sums, chunk_labels,
                                           numpy.full(last - first, row_scale, dtype), out=chunk_gradient)
            numpy.matmul(chunk_gradient, kernel.T, out=d_x[first:last])

    return rows
