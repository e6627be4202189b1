"""ONNX Runtime as an oracle: its LSTM operator on given tensors, and whole ONNX files.

Import after `pytest.importorskip("onnx")` and `pytest.importorskip("onnxruntime")`.
ONNX Runtime has no float64 LSTM kernel, so everything here runs in float32.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper


def run_model(model, feeds: dict) -> dict:
    """Run an ONNX model (a ModelProto, serialized bytes or a file path) on the CPU; {output name: array}."""
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                   providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def run_lstm_operator(W, R, B, x, *, direction: str = "forward", lengths=None, initial_h=None, initial_c=None):
    """One opset-14 LSTM node over time-major x [T, B, I]: (Y [T, D, B, H], Y_h, Y_c [D, B, H]).

    W [D, 4H, I], R [D, 4H, H], B [D, 8H] and the optional sequence lengths [B] and initial
    states [D, B, H] are fed as graph inputs; an absent optional input is named "" (ONNX's rule).
    """
    D, H = W.shape[0], R.shape[2]
    T, batch, I = x.shape
    float32 = TensorProto.FLOAT
    feeds = {"X": x, "W": W, "R": R, "B": B}
    shapes = {"X": [T, batch, I], "W": [D, 4 * H, I], "R": [D, 4 * H, H], "B": [D, 8 * H]}
    if lengths is not None:
        feeds["sequence_lens"], shapes["sequence_lens"] = np.asarray(lengths, np.int32), [batch]
    if initial_h is not None:
        feeds["initial_h"], feeds["initial_c"] = initial_h, initial_c
        shapes["initial_h"] = shapes["initial_c"] = [D, batch, H]
    names = [name if name in feeds else "" for name in ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c")]
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT32 if name == "sequence_lens" else float32,
                                            shapes[name]) for name in feeds]
    outputs = [helper.make_tensor_value_info("Y", float32, [T, D, batch, H]),
               helper.make_tensor_value_info("Y_h", float32, [D, batch, H]),
               helper.make_tensor_value_info("Y_c", float32, [D, batch, H])]
    node = helper.make_node("LSTM", names, ["Y", "Y_h", "Y_c"], hidden_size=H, direction=direction)
    model = helper.make_model(helper.make_graph([node], "lstm", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8  # readable by older runtimes too
    feeds = {name: value if name == "sequence_lens" else np.asarray(value, np.float32) for name, value in feeds.items()}
    result = run_model(model, feeds)
    return result["Y"], result["Y_h"], result["Y_c"]
