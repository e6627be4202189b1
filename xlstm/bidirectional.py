"""`bidirectional_dynamic_rnn`: one cell reads each sequence forwards, another backwards,
like TensorFlow's `tf.nn.bidirectional_dynamic_rnn`; and its vector–Jacobian product.

The backward direction reverses only the valid prefix of each row (`reverse_sequence`),
runs an ordinary `dynamic_rnn` over that, and reverses its outputs back, so that both
directions' outputs line up with the input positions and padding stays at the end.
"""
from __future__ import annotations

from typing import Any, Callable

from xlstm.cell import LSTMCell
from xlstm.recurrent_cell import RecurrentCell
from xlstm.checks import check_shape, device_of, namespace_of
from xlstm.rnn import checked_lengths, dynamic_rnn, dynamic_rnn_vjp
from xlstm.stack import MultiRNNCell

Pair = tuple[Any, Any]  # (forward direction, backward direction)


def reverse_sequence(x: Any, sequence_length: Any = None, time_major: bool = False) -> Any:
    """Reverse each row of `x` [B, T, ...] ([T, B, ...] when `time_major`) in time,
    but only its first sequence_length[b] steps; the padding after them stays in place.

    Like `tf.reverse_sequence`. The permutation is its own inverse, so the same call
    also maps gradients back.
    """
    xp = namespace_of(x=x)
    if x.ndim < 2:
        raise ValueError(f"x must have a batch and a time axis, got shape {list(x.shape)}")
    time_axis = 0 if time_major else 1
    steps, batch = x.shape[time_axis], x.shape[1 - time_axis]
    lengths = checked_lengths(sequence_length, steps, batch, x, xp)
    if lengths is None:
        return xp.flip(x, axis=time_axis)
    if steps * batch == 0:
        return x
    t = xp.arange(steps, device=device_of(x))[:, None]  # [T, 1]
    source = xp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)  # [T, B]: the step each lands on
    b = xp.arange(batch, device=device_of(x))[None, :]
    flat_index = source * batch + b if time_major else b * steps + source  # into x flattened to [T·B or B·T, ...]
    if not time_major:
        flat_index = xp.matrix_transpose(flat_index)  # [B, T]
    rows = steps * batch
    flat = xp.take(xp.reshape(x, (rows, -1)), xp.reshape(flat_index, (rows,)), axis=0)
    return xp.reshape(flat, tuple(x.shape))


def bidirectional_dynamic_rnn(
    cell_fw: LSTMCell | MultiRNNCell,
    cell_bw: LSTMCell | MultiRNNCell,
    inputs: Any,
    sequence_length: Any = None,
    initial_state_fw: Any = None,
    initial_state_bw: Any = None,
    time_major: bool = False,
) -> tuple[Pair, Pair]:
    """Run `cell_fw` forwards and `cell_bw` backwards over `inputs` [B, T, I].

    Returns ((outputs_fw, outputs_bw), (final_state_fw, final_state_bw)); both outputs are
    [B, T, H] aligned to the input positions (concatenate them on the last axis for
    PyTorch's layout). The backward final state is the one after reading a row's step 0.
    """
    _check_directions(cell_fw, cell_bw, inputs)
    outputs_fw, state_fw = dynamic_rnn(cell_fw, inputs, initial_state_fw, sequence_length, time_major)
    reversed_inputs = reverse_sequence(inputs, sequence_length, time_major)
    reversed_outputs, state_bw = dynamic_rnn(cell_bw, reversed_inputs, initial_state_bw, sequence_length, time_major)
    outputs_bw = reverse_sequence(reversed_outputs, sequence_length, time_major)
    return (outputs_fw, outputs_bw), (state_fw, state_bw)


def bidirectional_dynamic_rnn_vjp(
    cell_fw: LSTMCell | MultiRNNCell,
    cell_bw: LSTMCell | MultiRNNCell,
    inputs: Any,
    sequence_length: Any = None,
    initial_state_fw: Any = None,
    initial_state_bw: Any = None,
    time_major: bool = False,
) -> tuple[Pair, Pair, Callable[..., dict[str, Any]]]:
    """`bidirectional_dynamic_rnn` plus `backward(d_outputs, d_final_states)`.

    `backward` takes pairs (fw, bw) shaped like the outputs and final states (a pair, or
    either half, may be None: zero) and returns a dict: each direction's parameter
    gradients keyed "fw/NAME" and "bw/NAME" (NAME as in that cell's `parameters()`),
    "inputs", "initial_state_fw" and "initial_state_bw".
    """
    _check_directions(cell_fw, cell_bw, inputs)
    outputs_fw, state_fw, backward_fw = dynamic_rnn_vjp(cell_fw, inputs, initial_state_fw, sequence_length,
                                                        time_major)
    reversed_inputs = reverse_sequence(inputs, sequence_length, time_major)
    reversed_outputs, state_bw, backward_bw = dynamic_rnn_vjp(cell_bw, reversed_inputs, initial_state_bw,
                                                              sequence_length, time_major)
    outputs_bw = reverse_sequence(reversed_outputs, sequence_length, time_major)

    def backward(d_outputs: Pair | None = None, d_final_states: Pair | None = None) -> dict[str, Any]:
        d_out_fw, d_out_bw = pair("d_outputs", d_outputs)
        d_state_fw, d_state_bw = pair("d_final_states", d_final_states)
        if d_out_bw is not None:
            d_out_bw = reverse_sequence(d_out_bw, sequence_length, time_major)
        grads_fw = backward_fw(d_out_fw, d_state_fw)
        grads_bw = backward_bw(d_out_bw, d_state_bw)
        d_inputs = grads_fw.pop("inputs") + reverse_sequence(grads_bw.pop("inputs"), sequence_length, time_major)
        d_initial_fw, d_initial_bw = grads_fw.pop("initial_state"), grads_bw.pop("initial_state")
        return {**{f"fw/{name}": value for name, value in grads_fw.items()},
                **{f"bw/{name}": value for name, value in grads_bw.items()},
                "inputs": d_inputs, "initial_state_fw": d_initial_fw, "initial_state_bw": d_initial_bw}

    return (outputs_fw, outputs_bw), (state_fw, state_bw), backward


def _check_directions(cell_fw: Any, cell_bw: Any, inputs: Any) -> None:
    """Both directions must read the same inputs on the same backend and dtype."""
    for name, cell in (("cell_fw", cell_fw), ("cell_bw", cell_bw)):
        if not isinstance(cell, (LSTMCell, RecurrentCell, MultiRNNCell)):
            raise TypeError(f"{name} must be an xlstm.LSTMCell, SLSTMCell, MLSTMCell or MultiRNNCell, "
                            f"got {type(cell).__name__}")
    if cell_fw.input_size != cell_bw.input_size:
        raise ValueError(f"cell_fw and cell_bw must have the same input_size, got {cell_fw.input_size} "
                         f"and {cell_bw.input_size}")
    if (cell_fw.backend.name, cell_fw.dtype) != (cell_bw.backend.name, cell_bw.dtype):
        raise TypeError(f"cell_fw and cell_bw must share backend and dtype, got {cell_fw.backend.name}/"
                        f"{cell_fw.dtype} and {cell_bw.backend.name}/{cell_bw.dtype}")
    namespace_of(inputs=inputs)
    check_shape("inputs", inputs, (None, None, cell_fw.input_size), "[B, T, I] or [T, B, I]")


def pair(name: str, value: Any) -> Pair:
    """(fw, bw) from a pair (of outputs or of states) or from None (both None)."""
    if value is None:
        return None, None
    if not isinstance(value, (tuple, list)) or len(value) != 2 or hasattr(value, "_fields"):
        raise TypeError(f"{name} must be a pair (forward, backward) or None, got {type(value).__name__}")
    return value[0], value[1]
