"""The kinds of cell a language model can stack, by name: "lstm", "slstm", "mlstm".

A pattern names one kind for every layer ("slstm") or one per layer, bottom first, separated by
commas ("mlstm,slstm"): the `--cell` flag of `python -m xlstm train`.
"""
from __future__ import annotations

from typing import Any

from xlstm_backends import Backend
from xlstm.cell import LSTMCell
from xlstm.mlstm import MLSTMCell
from xlstm.slstm import SLSTMCell

CELL_KINDS = ("lstm", "slstm", "mlstm")
_DISPLAY = {"lstm": "LSTM", "slstm": "sLSTM", "mlstm": "mLSTM"}


def layer_kinds(pattern: str, num_layers: int) -> tuple[str, ...]:
    """The kind of each layer, bottom first, from a pattern (one kind, or one per layer)."""
    if not isinstance(pattern, str):
        raise TypeError(f"cell must be a string such as 'lstm' or 'mlstm,slstm', got {type(pattern).__name__}")
    kinds = tuple(kind.strip() for kind in pattern.split(","))
    unknown = [kind for kind in kinds if kind not in CELL_KINDS]
    if unknown:
        raise ValueError(f"cell must name kinds among {', '.join(CELL_KINDS)} (one, or one per layer separated by "
                         f"commas), got {pattern!r}")
    if len(kinds) == 1:
        return kinds * num_layers
    if len(kinds) != num_layers:
        raise ValueError(f"cell {pattern!r} names {len(kinds)} layers but num_layers is {num_layers}: "
                         f"give one kind, or exactly one per layer")
    return kinds


def make_cell(kind: str, num_units: int, input_size: int, *, num_heads: int, layer_norm: bool,
              dropout_keep_prob: float, forget_bias: float, dtype: Any, seed: int | None,
              backend: Backend) -> Any:
    """One layer's cell; layer norm, dropout and the forget bias are the LSTM cell's settings."""
    if kind == "lstm":
        return LSTMCell(num_units, input_size, layer_norm=layer_norm, dropout_keep_prob=dropout_keep_prob,
                        forget_bias=forget_bias, dtype=dtype, seed=seed, backend=backend)
    if layer_norm or dropout_keep_prob != 1.0:
        raise ValueError(f"layer_norm and dropout_keep_prob apply to lstm cells only, not to {kind}")
    cell_class = SLSTMCell if kind == "slstm" else MLSTMCell
    return cell_class(num_units, input_size, num_heads=num_heads, dtype=dtype, seed=seed, backend=backend)


def describe(kinds: tuple[str, ...], num_units: int) -> str:
    """'2×LSTM(192)' or 'mLSTM(192), sLSTM(192)': the stack in words, bottom first."""
    if len(set(kinds)) == 1:
        return f"{len(kinds)}×{_DISPLAY[kinds[0]]}({num_units})"
    return ", ".join(f"{_DISPLAY[kind]}({num_units})" for kind in kinds)
