"""`MultiRNNCell`: cells stacked so that layer k's output is layer k+1's input (LSTM, sLSTM and mLSTM
cells mix freely)."""
from __future__ import annotations

from typing import Any

from xlstm_backends import Backend
from xlstm.cell import LSTMCell
from xlstm.recurrent_cell import RecurrentCell


class MultiRNNCell:
    """A stack of cells (TensorFlow's semantics); its state is a tuple, bottom first."""

    def __init__(self, cells: list[LSTMCell | RecurrentCell]) -> None:
        cells = list(cells) if isinstance(cells, (list, tuple)) else cells
        if not isinstance(cells, list) or not cells or not all(isinstance(c, (LSTMCell, RecurrentCell))
                                                               for c in cells):
            raise TypeError("cells must be a non-empty list of xlstm.LSTMCell, SLSTMCell or MLSTMCell")
        for k, (lower, upper) in enumerate(zip(cells, cells[1:])):
            if upper.input_size != lower.num_units:
                raise ValueError(f"cells[{k + 1}].input_size must equal cells[{k}].num_units {lower.num_units} "
                                 f"(layer {k}'s output feeds layer {k + 1}), got {upper.input_size}")
            if (upper.backend.name, upper.dtype) != (lower.backend.name, lower.dtype):
                raise TypeError(f"cells[{k + 1}] and cells[{k}] must share backend and dtype, got "
                                f"{upper.backend.name}/{upper.dtype} and {lower.backend.name}/{lower.dtype}")
        self.cells = cells

    @property
    def input_size(self) -> int:
        return self.cells[0].input_size

    @property
    def num_units(self) -> int:
        return self.cells[-1].num_units

    output_size = num_units

    @property
    def backend(self) -> Backend:
        return self.cells[0].backend

    @property
    def dtype(self) -> Any:
        return self.cells[0].dtype

    @property
    def state_size(self) -> tuple:
        return tuple(cell.state_size for cell in self.cells)

    def zero_state(self, batch_size: int) -> tuple:
        """One all-zero state per layer, bottom first."""
        return tuple(cell.zero_state(batch_size) for cell in self.cells)

    def check_state(self, name: str, state: Any) -> tuple:
        """`state` must be a tuple holding one state per layer."""
        one_layers_state = hasattr(state, "_fields")  # an LSTMState, SLSTMState, ...: a NamedTuple
        if not isinstance(state, (tuple, list)) or len(state) != len(self.cells) or one_layers_state:
            raise TypeError(f"{name} must be a tuple of {len(self.cells)} states (one per layer, bottom first), "
                            f"got {type(state).__name__}")
        return tuple(state)

    def __call__(self, x: Any, state: tuple | None = None) -> tuple[Any, tuple]:
        """One step through every layer: (top layer's h, new states bottom first)."""
        states = [None] * len(self.cells) if state is None else self.check_state("state", state)
        new_states = []
        for cell, layer_state in zip(self.cells, states):
            x, new_state = cell(x, layer_state)
            new_states.append(new_state)
        return x, tuple(new_states)

    def parameters(self) -> dict[str, Any]:
        """Every layer's arrays, keyed "cell_K/NAME" like the gradients of `dynamic_rnn_vjp`."""
        return {f"cell_{k}/{name}": value for k, cell in enumerate(self.cells)
                for name, value in cell.parameters().items()}

    def to(self, backend: str | Backend, device: Any = None, dtype: Any = None) -> "MultiRNNCell":
        """A copy of the stack on another backend/device (and dtype)."""
        return MultiRNNCell([cell.to(backend, device, dtype) for cell in self.cells])

    def __repr__(self) -> str:
        return "MultiRNNCell([" + ", ".join(repr(cell) for cell in self.cells) + "])"
