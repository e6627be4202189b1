"""One benchmark row for the mLSTM: xlstm's MLSTMCell against NX-AI's pure-PyTorch parallel form, same shape.

`mlstm_row(backend, (B, T, I, H), heads)` times both (forward, and forward + backward) with the rule
`bench` uses for the LSTM (`median_ms`) and returns plain numbers for a table row.
"""
from __future__ import annotations

import gc
from typing import Any

import xlstm
from xlstm_backends import get_backend
from xlstm_backends.nxai_mlstm_timing import time_reference_mlstm
from xlstm_backends.torch_reference import median_ms


def measure_mlstm(backend: Any, shape: tuple[int, int, int, int], heads: int, repeats: int | None = None,
                  min_seconds: float = 0.5, form: str = "auto") -> dict[str, float]:
    """Forward and training-step medians (ms) of `MLSTMCell(output_gate=False)` in float32, public API only."""
    backend = get_backend(backend)
    batch, steps, input_size, units = shape
    dtype = backend.resolve_dtype("float32")
    cell = xlstm.MLSTMCell(units, input_size, num_heads=heads, output_gate=False, form=form, seed=0, dtype=dtype,
                           backend=backend)
    inputs = backend.random(0).normal((batch, steps, input_size), dtype)

    def training_step() -> None:
        outputs, _, backward = xlstm.dynamic_rnn_vjp(cell, inputs)
        backward(outputs, None)  # d(½Σ outputs²)/d outputs = outputs

    gc.collect()
    forward = median_ms(lambda: xlstm.dynamic_rnn(cell, inputs), backend.synchronize, repeats, min_seconds)
    gc.collect()
    training = median_ms(training_step, backend.synchronize, repeats, min_seconds)
    return {"forward_ms": forward.median_ms, "training_ms": training.median_ms}


def mlstm_row(backend: Any, shape: tuple[int, int, int, int] = (32, 64, 32, 192), heads: int = 4,
              threads: int | None = None, repeats: int | None = None, min_seconds: float = 0.5) -> dict[str, Any]:
    """{"shape", "heads", "xlstm": {...}, "reference": {...} or None, "reference_reason"}: the row's numbers."""
    ours = measure_mlstm(backend, shape, heads, repeats, min_seconds)
    theirs, reason = time_reference_mlstm(*shape, heads, threads=threads, repeats=repeats, min_seconds=min_seconds)
    return {"shape": list(shape), "heads": heads, "xlstm": ours, "reference": theirs, "reference_reason": reason}
