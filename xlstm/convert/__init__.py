"""Weights in and out of xlstm: PyTorch, TensorFlow 1, Keras and ONNX layouts (and NX-AI's sLSTM, in).

Every converter goes through `gates.py`, which states each framework's gate order and
folds TensorFlow's run-time forget bias in or out explicitly.
"""
from xlstm.convert.keras import from_keras, to_keras
from xlstm.convert.nxai_mlstm import from_nxai_mlstm, from_nxai_mlstm_state, to_nxai_mlstm_state
from xlstm.convert.nxai_slstm import from_nxai_slstm
from xlstm.convert.onnx import from_onnx, to_onnx_tensors
from xlstm.convert.pytorch import from_pytorch, from_pytorch_state, to_pytorch, to_pytorch_state
from xlstm.convert.tensorflow import from_tensorflow, to_tensorflow

__all__ = ["from_keras", "from_nxai_mlstm", "from_nxai_mlstm_state", "from_nxai_slstm", "from_onnx", "from_pytorch",
           "from_pytorch_state", "from_tensorflow", "to_keras", "to_nxai_mlstm_state", "to_onnx_tensors", "to_pytorch",
           "to_pytorch_state", "to_tensorflow"]
