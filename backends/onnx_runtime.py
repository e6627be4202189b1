"""ONNX Runtime as an oracle for `python -m xlstm selftest`: an exported file run on the CPU.

The only module that names onnxruntime; imported lazily, so xlstm runs without it.
"""
from __future__ import annotations

import os
from typing import Any

import numpy

_ELEMENT_TYPES = {"tensor(float)": numpy.float32, "tensor(double)": numpy.float64, "tensor(int32)": numpy.int32,
                  "tensor(int64)": numpy.int64}


def run_onnx_file(path: str | os.PathLike, feeds: dict[str, Any]) -> tuple[dict[str, numpy.ndarray] | None, str | None]:
    """({output name: array}, None) from ONNX Runtime's CPU provider, or (None, reason) without it.

    Each feed (any array or nested list) is converted to the element type the file declares.
    """
    try:
        import onnxruntime
    except ImportError:
        return None, "onnxruntime is not installed (pip install onnxruntime)"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    declared = {item.name: _ELEMENT_TYPES[item.type] for item in session.get_inputs()}
    host_feeds = {name: numpy.asarray(value, dtype=declared[name]) for name, value in feeds.items()}
    return dict(zip(names, session.run(names, host_feeds))), None
