"""Layers that read whole sequences, and `LSTM`, a stack of them (like `torch.nn.LSTM`).

A sequence layer is one of
- a cell (`LSTMCell`, `SLSTMCell`, `MLSTMCell`) or `MultiRNNCell`: reads each row forwards (`dynamic_rnn`);
- `Reversed(cell)`: reads each row's valid prefix backwards, outputs aligned to the
  input positions (ONNX's direction "reverse");
- `Bidirectional(cell_fw, cell_bw)`: both, outputs concatenated on the last axis
  (PyTorch's and ONNX's "bidirectional").
Every layer is called as `layer(inputs, initial_state=None, sequence_length=None,
time_major=False)` → (outputs, final_state), and `vjp(...)` adds a backward closure.
"""
from __future__ import annotations

from typing import Any, Callable

from xlstm_backends import Backend
from xlstm.bidirectional import bidirectional_dynamic_rnn, bidirectional_dynamic_rnn_vjp, pair, reverse_sequence
from xlstm.cell import LSTMCell
from xlstm.recurrent_cell import RecurrentCell
from xlstm.checks import check_shape, namespace_of
from xlstm.rnn import chain_vjp, dynamic_rnn, dynamic_rnn_vjp
from xlstm.stack import MultiRNNCell

Cell = LSTMCell | RecurrentCell | MultiRNNCell
Backward = Callable[..., dict[str, Any]]


def _check_cell(name: str, cell: Any) -> Cell:
    if not isinstance(cell, (LSTMCell, RecurrentCell, MultiRNNCell)):
        raise TypeError(f"{name} must be an xlstm.LSTMCell, SLSTMCell, MLSTMCell or MultiRNNCell, "
                        f"got {type(cell).__name__}")
    return cell


class Reversed:
    """A cell that reads each sequence from its last valid step to its first."""

    def __init__(self, cell: Cell) -> None:
        self.cell = _check_cell("cell", cell)

    input_size = property(lambda self: self.cell.input_size)
    output_size = property(lambda self: self.cell.output_size)
    backend = property(lambda self: self.cell.backend)
    dtype = property(lambda self: self.cell.dtype)

    def __call__(self, inputs: Any, initial_state: Any = None, sequence_length: Any = None,
                 time_major: bool = False) -> tuple[Any, Any]:
        """outputs [B, T, H] aligned to the inputs, and the state after reading step 0."""
        reversed_inputs = reverse_sequence(inputs, sequence_length, time_major)
        outputs, final_state = dynamic_rnn(self.cell, reversed_inputs, initial_state, sequence_length, time_major)
        return reverse_sequence(outputs, sequence_length, time_major), final_state

    def vjp(self, inputs: Any, initial_state: Any = None, sequence_length: Any = None,
            time_major: bool = False) -> tuple[Any, Any, Backward]:
        """The call plus `backward(d_outputs, d_final_state)`, as `dynamic_rnn_vjp`'s."""
        reversed_inputs = reverse_sequence(inputs, sequence_length, time_major)
        outputs, final_state, backward_cell = dynamic_rnn_vjp(self.cell, reversed_inputs, initial_state,
                                                              sequence_length, time_major)

        def backward(d_outputs: Any = None, d_final_state: Any = None) -> dict[str, Any]:
            if d_outputs is not None:
                d_outputs = reverse_sequence(d_outputs, sequence_length, time_major)
            grads = backward_cell(d_outputs, d_final_state)
            grads["inputs"] = reverse_sequence(grads["inputs"], sequence_length, time_major)
            return grads

        return reverse_sequence(outputs, sequence_length, time_major), final_state, backward

    def parameters(self) -> dict[str, Any]:
        """The wrapped cell's arrays, under its own names."""
        return self.cell.parameters()

    def to(self, backend: str | Backend, device: Any = None, dtype: Any = None) -> "Reversed":
        """A copy on another backend/device (and dtype)."""
        return Reversed(self.cell.to(backend, device, dtype))

    def __repr__(self) -> str:
        return f"Reversed({self.cell!r})"


class Bidirectional:
    """`cell_fw` reads forwards, `cell_bw` backwards; outputs [B, T, H_fw + H_bw], fw first."""

    def __init__(self, cell_fw: Cell, cell_bw: Cell) -> None:
        self.cell_fw, self.cell_bw = _check_cell("cell_fw", cell_fw), _check_cell("cell_bw", cell_bw)
        if cell_fw.input_size != cell_bw.input_size:
            raise ValueError(f"cell_fw and cell_bw must have the same input_size, got {cell_fw.input_size} "
                             f"and {cell_bw.input_size}")

    input_size = property(lambda self: self.cell_fw.input_size)
    output_size = property(lambda self: self.cell_fw.output_size + self.cell_bw.output_size)
    backend = property(lambda self: self.cell_fw.backend)
    dtype = property(lambda self: self.cell_fw.dtype)

    def __call__(self, inputs: Any, initial_state: Any = None, sequence_length: Any = None,
                 time_major: bool = False) -> tuple[Any, Any]:
        """Concatenated outputs and the pair (final_state_fw, final_state_bw)."""
        state_fw, state_bw = pair("initial_state", initial_state)
        outputs, final_states = bidirectional_dynamic_rnn(self.cell_fw, self.cell_bw, inputs, sequence_length,
                                                          state_fw, state_bw, time_major)
        return namespace_of(inputs=inputs).concat(outputs, axis=-1), final_states

    def vjp(self, inputs: Any, initial_state: Any = None, sequence_length: Any = None,
            time_major: bool = False) -> tuple[Any, Any, Backward]:
        """The call plus `backward(d_outputs, d_final_state)` → "fw/…", "bw/…", "inputs",
        "initial_state" (a pair)."""
        state_fw, state_bw = pair("initial_state", initial_state)
        outputs, final_states, backward_pair = bidirectional_dynamic_rnn_vjp(
            self.cell_fw, self.cell_bw, inputs, sequence_length, state_fw, state_bw, time_major)
        xp = namespace_of(inputs=inputs)
        joined = xp.concat(outputs, axis=-1)

        def backward(d_outputs: Any = None, d_final_state: Any = None) -> dict[str, Any]:
            d_pair = None
            if d_outputs is not None:
                check_shape("d_outputs", d_outputs, tuple(joined.shape), "like the outputs")
                split = self.cell_fw.output_size
                d_pair = (d_outputs[..., :split], d_outputs[..., split:])
            grads = backward_pair(d_pair, d_final_state)
            grads["initial_state"] = (grads.pop("initial_state_fw"), grads.pop("initial_state_bw"))
            return grads

        return joined, final_states, backward

    def parameters(self) -> dict[str, Any]:
        """Each direction's arrays, keyed "fw/NAME" and "bw/NAME"."""
        return {**{f"fw/{name}": value for name, value in self.cell_fw.parameters().items()},
                **{f"bw/{name}": value for name, value in self.cell_bw.parameters().items()}}

    def to(self, backend: str | Backend, device: Any = None, dtype: Any = None) -> "Bidirectional":
        """A copy on another backend/device (and dtype)."""
        return Bidirectional(self.cell_fw.to(backend, device, dtype), self.cell_bw.to(backend, device, dtype))

    def __repr__(self) -> str:
        return f"Bidirectional({self.cell_fw!r}, {self.cell_bw!r})"


Layer = LSTMCell | RecurrentCell | MultiRNNCell | Reversed | Bidirectional


class LSTM:
    """Sequence layers run one after another: layer k's outputs are layer k+1's inputs.

    What `xlstm.convert` builds from a `torch.nn.LSTM` (a bidirectional one is a stack of
    `Bidirectional` layers), a Keras `LSTM` layer or an ONNX LSTM operator. Its state is a
    tuple with one entry per layer (a pair (fw, bw) for a `Bidirectional` layer).
    """

    def __init__(self, layers: list[Layer]) -> None:
        layers = list(layers) if isinstance(layers, (list, tuple)) else layers
        if not isinstance(layers, list) or not layers:
            raise TypeError("layers must be a non-empty list of cells, MultiRNNCell, Reversed or Bidirectional")
        for k, layer in enumerate(layers):
            if not isinstance(layer, (LSTMCell, RecurrentCell, MultiRNNCell, Reversed, Bidirectional)):
                raise TypeError(f"layers[{k}] must be a cell, MultiRNNCell, Reversed or Bidirectional, "
                                f"got {type(layer).__name__}")
        for k, (lower, upper) in enumerate(zip(layers, layers[1:])):
            if upper.input_size != lower.output_size:
                raise ValueError(f"layers[{k + 1}].input_size must equal layers[{k}].output_size "
                                 f"{lower.output_size}, got {upper.input_size}")
            if (upper.backend.name, upper.dtype) != (lower.backend.name, lower.dtype):
                raise TypeError(f"layers[{k + 1}] and layers[{k}] must share backend and dtype, got "
                                f"{upper.backend.name}/{upper.dtype} and {lower.backend.name}/{lower.dtype}")
        self.layers = layers

    input_size = property(lambda self: self.layers[0].input_size)
    output_size = property(lambda self: self.layers[-1].output_size)
    backend = property(lambda self: self.layers[0].backend)
    dtype = property(lambda self: self.layers[0].dtype)

    def __call__(self, inputs: Any, initial_state: tuple | None = None, sequence_length: Any = None,
                 time_major: bool = False) -> tuple[Any, tuple]:
        """inputs [B, T, I] → (top layer's outputs [B, T, output_size], final states per layer)."""
        finals = []
        for layer, state in zip(self.layers, self._initial_states(initial_state)):
            if isinstance(layer, (LSTMCell, RecurrentCell, MultiRNNCell)):
                inputs, final = dynamic_rnn(layer, inputs, state, sequence_length, time_major)
            else:
                inputs, final = layer(inputs, state, sequence_length, time_major)
            finals.append(final)
        return inputs, tuple(finals)

    def vjp(self, inputs: Any, initial_state: tuple | None = None, sequence_length: Any = None,
            time_major: bool = False) -> tuple[Any, tuple, Backward]:
        """The call plus `backward(d_outputs, d_final_state)` → gradients keyed "layer_K/NAME",
        "inputs" and "initial_state" (a tuple per layer)."""
        def run(layer: Layer) -> Callable:
            if isinstance(layer, (LSTMCell, RecurrentCell, MultiRNNCell)):
                return lambda x, state: dynamic_rnn_vjp(layer, x, state, sequence_length, time_major)
            return lambda x, state: layer.vjp(x, state, sequence_length, time_major)

        return chain_vjp([run(layer) for layer in self.layers], inputs, self._initial_states(initial_state),
                         "layer", lambda d_state: self._initial_states(d_state, "d_final_state"))

    def _initial_states(self, states: Any, name: str = "initial_state") -> tuple:
        if states is None:
            return (None,) * len(self.layers)
        if not isinstance(states, (tuple, list)) or len(states) != len(self.layers):
            raise TypeError(f"{name} must be a tuple with one state per layer ({len(self.layers)}), "
                            f"got {type(states).__name__}")
        return tuple(states)

    def parameters(self) -> dict[str, Any]:
        """Every layer's arrays, keyed "layer_K/NAME" like the gradients of `vjp`."""
        return {f"layer_{k}/{name}": value for k, layer in enumerate(self.layers)
                for name, value in layer.parameters().items()}

    def to(self, backend: str | Backend, device: Any = None, dtype: Any = None) -> "LSTM":
        """A copy on another backend/device (and dtype)."""
        return LSTM([layer.to(backend, device, dtype) for layer in self.layers])

    def __repr__(self) -> str:
        return "LSTM([" + ", ".join(repr(layer) for layer in self.layers) + "])"
