"""`python -m xlstm bench --task xlstm`: our sLSTM and mLSTM cells against NX-AI's pure-PyTorch code.

The shape is the default `train` model's layer (batch 32, window 64, embedding 32 → 192 units,
4 heads), float32. For each cell it times our forward (`xlstm.dynamic_rnn`) and training step
(`dynamic_rnn_vjp` plus its backward for loss = ½Σ outputs²) and the reference doing the same
(backends/nxai_bench.py: their `slstm_forward`, their `parallel_stabilized_simple`, with autograd),
alternating `runs` times in one process.
"""
from __future__ import annotations

import gc
import statistics
from typing import Any

import xlstm
from xlstm_backends.nxai_bench import time_reference_cell
from xlstm_backends.torch_reference import median_ms

SHAPE = (32, 64, 32, 192)  # batch, steps, input size, hidden size
NUM_HEADS = 4
CELLS = {"slstm": xlstm.SLSTMCell, "mlstm": xlstm.MLSTMCell}


def time_cell(cell: Any, inputs: Any, backend: Any, repeats: int | None, min_seconds: float) -> tuple[Any, Any]:
    """The forward's and the training step's `Timing` of any cell (or stack) on `inputs`, public API only:
    `dynamic_rnn`, and `dynamic_rnn_vjp` plus its backward for loss = ½Σ outputs² (the LSTM's layer task too)."""

    def forward() -> None:
        xlstm.dynamic_rnn(cell, inputs)

    def training_step() -> None:
        outputs, _, backward = xlstm.dynamic_rnn_vjp(cell, inputs)
        backward(outputs)  # d(½Σ outputs²)/d outputs = outputs

    gc.collect()
    forward_timing = median_ms(forward, backend.synchronize, repeats, min_seconds)
    gc.collect()
    return forward_timing, median_ms(training_step, backend.synchronize, repeats, min_seconds)


def measure_cell(kind: str, backend: Any, repeats: int | None, min_seconds: float) -> dict[str, float]:
    """Forward and training-step medians (ms) of our `kind` cell on `backend`."""
    batch, steps, input_size, hidden = SHAPE
    dtype = backend.resolve_dtype("float32")
    cell = CELLS[kind](hidden, input_size, num_heads=NUM_HEADS, seed=0, dtype=dtype, backend=backend)
    forward, training = time_cell(cell, backend.random(0).normal((batch, steps, input_size), dtype), backend,
                                  repeats, min_seconds)
    return {"forward_ms": forward.median_ms, "training_ms": training.median_ms}


def measure_cells(backend: Any, runs: int, repeats: int | None, min_seconds: float) -> dict[str, Any]:
    """Every cell's figures: ours and the reference's, `runs` times alternating, and their ratios."""
    result: dict[str, Any] = {"shape": list(SHAPE), "num_heads": NUM_HEADS, "reference_reason": None, "cells": {}}
    for kind in CELLS:
        ours, theirs = [], []
        for _ in range(runs):
            ours.append(measure_cell(kind, backend, repeats, min_seconds))
            reference, reason = time_reference_cell(kind, *SHAPE, NUM_HEADS, repeats=repeats, min_seconds=min_seconds)
            result["reference_reason"] = reason
            if reference is not None:
                theirs.append(reference)
        result["cells"][kind] = {"xlstm": ours, "reference": theirs or None}
    return result


def format_cells(result: dict[str, Any]) -> list[str]:
    """The rows of the report: per cell and pass, our median ms, the reference's and the ratio."""
    batch, steps, input_size, hidden = result["shape"]
    lines = [f"xLSTM cells: batch {batch}, {steps} steps, input {input_size}, {hidden} units, "
             f"{result['num_heads']} heads, float32; reference: NX-AI xlstm 2.0.6's PyTorch code",
             f"  {'cell':<7}{'pass':<10}{'xlstm ms':>10}{'reference ms':>14}{'xlstm/reference':>17}"]
    for kind, figures in result["cells"].items():
        for name in ("forward", "training"):
            ours = statistics.median(run[f"{name}_ms"] for run in figures["xlstm"])
            if figures["reference"] is None:
                lines.append(f"  {kind:<7}{name:<10}{ours:>10.2f}{'—':>14}  (not measured: "
                             f"{result['reference_reason']})")
                continue
            ratios = [a[f"{name}_ms"] / b[f"{name}_ms"] for a, b in zip(figures["xlstm"], figures["reference"])]
            theirs = statistics.median(run[f"{name}_ms"] for run in figures["reference"])
            spread = f"  [{min(ratios):.2f}–{max(ratios):.2f}]" if len(ratios) > 1 else ""
            lines.append(f"  {kind:<7}{name:<10}{ours:>10.2f}{theirs:>14.2f}{statistics.median(ratios):>17.2f}{spread}")
    lines.append("  (xlstm/reference below 1: ours is faster)")
    return lines
