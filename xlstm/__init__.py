"""xlstm: one LSTM written against the Python array API standard (NumPy, CuPy, ...).

It follows TensorFlow 1's `LayerNormBasicLSTMCell` and `dynamic_rnn`; see README.md.
"""
from xlstm_backends import (
    Backend,
    BackendError,
    asarray,
    available_backends,
    current_backend,
    to_numpy,
    use_backend,
)
from xlstm import convert, data, init, models, optim
from xlstm.cell import LSTMCell, LSTMState
from xlstm.slstm import SLSTMCell, SLSTMState
from xlstm.dense import Dense
from xlstm.mlstm import MLSTMCell, MLSTMState
from xlstm.functional import log_softmax, one_hot, sigmoid, softmax
from xlstm.losses import sequence_loss, sequence_loss_vjp, softmax_cross_entropy, softmax_cross_entropy_vjp
from xlstm.onnx_export import export_onnx
from xlstm.stack import MultiRNNCell
from xlstm.rnn import dynamic_rnn, dynamic_rnn_vjp
from xlstm.table_rows import TableRows
from xlstm.bidirectional import bidirectional_dynamic_rnn, bidirectional_dynamic_rnn_vjp, reverse_sequence
from xlstm.sequence import LSTM, Bidirectional, Reversed
from xlstm.serialization import load, save

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendError",
    "Bidirectional",
    "Dense",
    "LSTM",
    "LSTMCell",
    "LSTMState",
    "MLSTMCell",
    "MLSTMState",
    "MultiRNNCell",
    "Reversed",
    "SLSTMCell",
    "SLSTMState",
    "TableRows",
    "asarray",
    "available_backends",
    "bidirectional_dynamic_rnn",
    "bidirectional_dynamic_rnn_vjp",
    "current_backend",
    "convert",
    "dynamic_rnn",
    "dynamic_rnn_vjp",
    "export_onnx",
    "data",
    "init",
    "models",
    "optim",
    "load",
    "log_softmax",
    "one_hot",
    "reverse_sequence",
    "save",
    "sequence_loss",
    "sequence_loss_vjp",
    "sigmoid",
    "softmax",
    "softmax_cross_entropy",
    "softmax_cross_entropy_vjp",
    "to_numpy",
    "use_backend",
]
