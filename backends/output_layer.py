"""A language model's output layer in one call: logits = x·K + b, mean-share softmax cross-entropy,
and the gradients d_x, d_K, d_b, for the numpy backend.

The generic code (Dense.vjp, softmax_cross_entropy_vjp, the dense backward) makes three products
over all N rows, each waking OpenBLAS's second thread after the single-threaded time loop has let it
sleep, and passes the [N, V] logits, exps and gradient through memory between them. Here the rows
are cut into one block per row thread (`row_threads`), each with one-thread BLAS. A block's rows are
filled by the kernel path's `output_layer_rows` (compiled with the `fast` extra: numba_training.py,
else NumPy's: numpy_losses.py) a chunk of about CHUNK_ELEMENTS logits at a time, so that a chunk's
logits stay in the core's cache from their product through the softmax and its gradient to the
chunk's d_x product. The block's d_K and d_b then come from its gradient rows in one product and
one sum, and the blocks' partial d_K, d_b are added at the end.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy
from threadpoolctl import ThreadpoolController

from xlstm_backends.row_threads import row_blocks, run_on_row_blocks
from xlstm_backends.workspace import WORKSPACE

CHUNK_ELEMENTS = 1 << 15  # logits of one chunk: 128 KiB in float32, well inside a core's L2 with its x rows
# ...but at least MIN_CHUNK_ROWS rows: every chunk's product streams all of K, which at a large vocabulary
# is beyond the cache (V = 8192, K 6 MiB, 2048 rows: 4-row chunks 208 ms, 32 rows 89, 128 rows 86, 512 rows
# 97, the generic code 112), and whole multiples of the hand-tiled product's 8-row tiles
MIN_CHUNK_ROWS, CHUNK_ROWS_STEP = 64, 8
MIN_ROWS = 128  # a row block smaller than this is not worth a thread of its own


@functools.cache
def _blas() -> ThreadpoolController:
    """The loaded BLAS libraries, found once (the scan takes milliseconds)."""
    return ThreadpoolController()


class OutputLayerKernels:
    """The fused output layer over one kernel path's loss kernels (`loss`: a module with DESCRIPTION and
    `output_layer_rows`)."""

    def __init__(self, loss: Any) -> None:
        self.loss = loss
        self.DESCRIPTION = f"{loss.DESCRIPTION} on row threads, one-thread BLAS"

    def dense_softmax_cross_entropy(self, x: numpy.ndarray, kernel: numpy.ndarray, bias: numpy.ndarray,
                                    labels: numpy.ndarray, row_scale: float) -> tuple[Any, Any, Any, Any]:
        """(Σ row_scale·loss, a scalar of x's dtype, d_x [N, H], d_kernel [H, V], d_bias [V]) for checked x [N, H],
        kernel [H, V], bias [V] of one float dtype and labels [N] in [0, V): Dense.vjp, then
        softmax_cross_entropy_vjp with every row weighted row_scale, then the dense layer's backward."""
        rows, units = x.shape
        classes, dtype = kernel.shape[1], x.dtype
        x, labels = numpy.ascontiguousarray(x), numpy.ascontiguousarray(labels)
        d_x, gradient = WORKSPACE.empty((rows, units), dtype), WORKSPACE.empty((rows, classes), dtype)
        losses = numpy.empty(rows, dtype)
        fill_rows = self.loss.output_layer_rows(x, kernel, bias, labels, row_scale, gradient, d_x, losses,
                                                max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // classes // CHUNK_ROWS_STEP
                                                    * CHUNK_ROWS_STEP, 1))
        blocks = row_blocks(rows, MIN_ROWS)
        partial: dict[int, tuple[Any, Any]] = {}

        def block(start: int, stop: int) -> None:
            """Logits, losses, gradient and d_x of the block's rows, then its d_kernel and d_bias."""
            fill_rows(start, stop)
            partial[start] = (numpy.matmul(x[start:stop].T, gradient[start:stop]),
                              numpy.sum(gradient[start:stop], axis=0))

        with _blas().limit(limits=1, user_api="blas"):
            run_on_row_blocks(block, blocks)
        d_kernel, d_bias = partial[blocks[0][0]]
        for start, _ in blocks[1:]:
            d_kernel += partial[start][0]
            d_bias += partial[start][1]
        return numpy.sum(losses) * dtype.type(row_scale), d_x, d_kernel, d_bias
