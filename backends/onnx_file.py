"""ONNX files: a graph description (`xlstm.onnx_export.Graph`) → a checked ModelProto, written atomically.

The only module that names the onnx library, imported when a file is written, so that
xlstm runs without it.
"""
from __future__ import annotations

import os
from typing import Any

import numpy

from xlstm_backends.storage import write_atomically

ELEMENT_TYPES = {"float32": "FLOAT", "float64": "DOUBLE", "int32": "INT32", "int64": "INT64"}


def write_onnx(graph: Any, path: str | os.PathLike) -> None:
    """Build `graph` (name, opset, nodes, initializers, inputs, outputs) as an ONNX model, check
    it with `onnx.checker` (shape inference included) and write it to `path` atomically."""
    onnx = _import_onnx()
    model = _build_model(onnx, graph)
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    write_atomically(path, lambda file: file.write(data))


def _build_model(onnx: Any, graph: Any) -> Any:
    """The ModelProto of `graph`, at the lowest IR version that holds its opset."""
    helper = onnx.helper

    def value(info: Any) -> Any:
        return helper.make_tensor_value_info(info.name, getattr(onnx.TensorProto, ELEMENT_TYPES[info.dtype]),
                                             list(info.shape))

    proto = helper.make_graph(
        [helper.make_node(node.op_type, list(node.inputs), list(node.outputs), **node.attributes)
         for node in graph.nodes],
        graph.name,
        [value(info) for info in graph.inputs],
        [value(info) for info in graph.outputs],
        initializer=[onnx.numpy_helper.from_array(numpy.asarray(array), name)
                     for name, array in graph.initializers.items()],
    )
    opsets = [helper.make_opsetid("", graph.opset)]
    model = helper.make_model(proto, opset_imports=opsets, producer_name="xlstm")
    model.ir_version = helper.find_min_ir_version_for(opsets)  # readable by the oldest runtime that knows the opset
    return model


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ImportError("writing ONNX files needs the onnx package: pip install 'xlstm-array[onnx]'") from None
    return onnx
