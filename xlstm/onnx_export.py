"""`export_onnx`: an xlstm model as a graph of ONNX `LSTM` operators, for ONNX Runtime and others.

This module decides the graph (which operators, wired how, with which weights) as a
library-neutral `Graph`; `xlstm_backends.onnx_file` turns that into a checked ONNX file. Layout:

    inputs [batch, time, I] ─Transpose→ [T, B, I] ─LSTM ops…→ [T, B, H] ─Transpose→ outputs [batch, time, H]
                                                                      (─MatMul, Add→ logits)

Each LSTM operator K yields Y [T, D, B, H] (Squeeze for D = 1; Transpose to [T, B, 2, H] and
Reshape to [T, B, 2H] for D = 2) and its final states, graph outputs "final_h_K" and
"final_c_K" [D, batch, H]. A MultiRNNCell is a chain of operators; Reversed(MultiRNNCell) a
chain of "reverse" ones (reversing each layer's valid prefix composes); a Bidirectional of
two equal LSTMCells is one "bidirectional" operator, otherwise two chains joined by Concat.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlstm_backends import Backend, to_numpy
from xlstm_backends.onnx_file import write_onnx
from xlstm.cell import LSTMCell
from xlstm.convert.onnx import host_copy, operator_tensors
from xlstm.dense import Dense
from xlstm.sequence import LSTM, Bidirectional, Reversed
from xlstm.stack import MultiRNNCell

# Opset 17 (ONNX 1.12, 2022): its LSTM is the latest version (14) and Squeeze takes axes as an
# input (13+). ONNX Runtime 1.32 runs it, and so do runtimes a few years older than that.
OPSET = 17
EXPORT_DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Node:
    """One operator: its type, the names of its input and output values, its attributes."""

    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Value:
    """A graph input or output: element type ("float32", "float64", "int32") and shape, whose
    entries are sizes or names of symbolic dimensions ("batch", "time")."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class Graph:
    """All an ONNX file holds, without any ONNX library object; initializers are NumPy arrays."""

    name: str
    opset: int
    nodes: list[Node]
    initializers: dict[str, Any]
    inputs: list[Value]
    outputs: list[Value]


def export_onnx(cell_or_model: Any, path: str | os.PathLike, dense: Dense | None = None, *,
                sequence_length: bool = False, dtype: str = "float32") -> None:
    """Write `cell_or_model` (an LSTMCell, MultiRNNCell, Reversed, Bidirectional or xlstm.LSTM),
    and `dense` on top of it as "logits", to `path` as an ONNX model.

    Inputs: "inputs" [batch, time, input_size] and, with `sequence_length=True`, an int32
    "sequence_length" [batch]. Outputs: "outputs" [batch, time, output_size], "logits" (with
    `dense`) and "final_h_K", "final_c_K" [directions, batch, hidden] for each LSTM operator K.
    float32 by default: ONNX Runtime has no float64 LSTM kernel, so a `dtype="float64"` file is
    valid ONNX that it cannot run. Dropout is a training device and is not exported. All is
    checked and built before `path` is written, atomically: a refusal leaves it as it was.
    """
    target = _check_path(path)
    write_onnx(onnx_graph(cell_or_model, dense, sequence_length=sequence_length, dtype=dtype), target)


def onnx_graph(cell_or_model: Any, dense: Dense | None = None, *, sequence_length: bool = False,
               dtype: str = "float32") -> Graph:
    """The graph `export_onnx` writes, as a library-neutral description."""
    if not isinstance(cell_or_model, (LSTMCell, MultiRNNCell, Reversed, Bidirectional, LSTM)):
        raise TypeError(f"cell_or_model must be an xlstm LSTMCell, MultiRNNCell, Reversed, Bidirectional or LSTM, "
                        f"got {type(cell_or_model).__name__}")
    if dense is not None and not isinstance(dense, Dense):
        raise TypeError(f"dense must be an xlstm.Dense or None, got {type(dense).__name__}")
    if dense is not None and dense.input_size != cell_or_model.output_size:
        raise ValueError(f"dense.input_size must equal the model's output_size {cell_or_model.output_size}, "
                         f"got {dense.input_size}")
    if not isinstance(sequence_length, bool):
        raise TypeError(f"sequence_length must be True or False (whether the graph takes a \"sequence_length\" "
                        f"input), got {type(sequence_length).__name__}")
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {EXPORT_DTYPES}, got {dtype!r}")
    builder = _Builder(cell_or_model.backend, dtype, "sequence_length" if sequence_length else "")
    top = _layer(builder, cell_or_model, builder.node("Transpose", ["inputs"], "inputs_time_major", perm=[1, 0, 2]))
    builder.node("Transpose", [top], "outputs", perm=[1, 0, 2])
    outputs = [Value("outputs", dtype, ("batch", "time", cell_or_model.output_size))]
    if dense is not None:
        builder.initializers.update(dense_kernel=host_copy(dense.kernel, dtype), dense_bias=host_copy(dense.bias, dtype))
        builder.node("Add", [builder.node("MatMul", ["outputs", "dense_kernel"], "dense_matmul"), "dense_bias"],
                     "logits")
        outputs.append(Value("logits", dtype, ("batch", "time", dense.units)))
    inputs = [Value("inputs", dtype, ("batch", "time", cell_or_model.input_size))]
    if sequence_length:
        inputs.append(Value("sequence_length", "int32", ("batch",)))
    return Graph("xlstm", OPSET, builder.nodes, builder.initializers, inputs, outputs + builder.final_states)


def _check_path(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    target = Path(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"path's folder {str(target.parent)!r} does not exist or is not a folder")
    if target.is_dir():
        raise IsADirectoryError(f"path {str(target)!r} is a folder; give a file name such as model.onnx")
    return target


class _Builder:
    """Collects nodes, initializers and final-state outputs while the model is walked."""

    def __init__(self, backend: Backend, dtype: str, lengths: str) -> None:
        self.backend, self.dtype, self.lengths = backend, dtype, lengths
        self.nodes: list[Node] = []
        self.initializers: dict[str, Any] = {}
        self.final_states: list[Value] = []
        self.operators = 0

    def node(self, op_type: str, inputs: list[str], output: str, **attributes: Any) -> str:
        """Add a one-output node; returns the output's name."""
        self.nodes.append(Node(op_type, tuple(inputs), (output,), attributes))
        return output

    def int64(self, name: str, values: list[int]) -> str:
        """An int64 constant (shapes, axes) as an initializer; returns its name."""
        xp = self.backend.xp
        self.initializers[name] = to_numpy(xp.asarray(values, dtype=xp.int64, device=self.backend.device))
        return name

    def lstm(self, cells: list[LSTMCell], direction: str, x: str) -> str:
        """One LSTM operator over time-major `x`; returns the name of its outputs [T, B, D·H]."""
        k, self.operators = self.operators, self.operators + 1
        tensors = operator_tensors(cells, direction, self.dtype)
        for name in ("W", "R", "B"):
            self.initializers[f"lstm_{k}_{name}"] = tensors[name]
        inputs = [x, f"lstm_{k}_W", f"lstm_{k}_R", f"lstm_{k}_B"] + ([self.lengths] if self.lengths else [])
        finals = (f"final_h_{k}", f"final_c_{k}")
        self.nodes.append(Node("LSTM", tuple(inputs), (f"lstm_{k}_Y", *finals),
                               {"hidden_size": tensors["hidden_size"], "direction": direction}))
        self.final_states += [Value(name, self.dtype, (len(cells), "batch", tensors["hidden_size"])) for name in finals]
        if len(cells) == 1:  # Y [T, 1, B, H] → [T, B, H]
            return self.node("Squeeze", [f"lstm_{k}_Y", self.int64("axes_1", [1])], f"lstm_{k}_outputs")
        both = self.node("Transpose", [f"lstm_{k}_Y"], f"lstm_{k}_Y_tbdh", perm=[0, 2, 1, 3])  # [T, B, 2, H]
        return self.node("Reshape", [both, self.int64("shape_merge_last_two", [0, 0, -1])], f"lstm_{k}_outputs")


def _layer(builder: _Builder, layer: Any, x: str) -> str:
    """Add the operators computing `layer` on time-major `x` [T, B, I]; the name of its outputs."""
    if isinstance(layer, LSTM):
        for inner in layer.layers:
            x = _layer(builder, inner, x)
        return x
    if isinstance(layer, Reversed):
        return _chain(builder, layer.cell, "reverse", x)
    if isinstance(layer, Bidirectional):
        fw, bw = layer.cell_fw, layer.cell_bw
        if isinstance(fw, LSTMCell) and isinstance(bw, LSTMCell) and fw.num_units == bw.num_units:
            return builder.lstm([fw, bw], "bidirectional", x)
        joined = [_chain(builder, fw, "forward", x), _chain(builder, bw, "reverse", x)]
        return builder.node("Concat", joined, f"concat_{builder.operators - 1}", axis=2)
    return _chain(builder, layer, "forward", x)


def _chain(builder: _Builder, cell: LSTMCell | MultiRNNCell, direction: str, x: str) -> str:
    """One operator per layer of `cell`, each reading the one before."""
    for layer in cell.cells if isinstance(cell, MultiRNNCell) else [cell]:
        x = builder.lstm([layer], direction, x)
    return x
