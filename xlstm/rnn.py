"""`dynamic_rnn`: unroll a cell over a sequence, like TensorFlow's `tf.nn.dynamic_rnn`."""
from __future__ import annotations

from typing import Any

from backends import asarray
from xlstm.cell import LSTMCell, LSTMState, lstm_step
from xlstm.checks import check_integer, check_range, check_shape, device_of, namespace_of


def dynamic_rnn(
    cell: LSTMCell,
    inputs: Any,
    initial_state: LSTMState | None = None,
    sequence_length: Any = None,
    time_major: bool = False,
) -> tuple[Any, LSTMState]:
    """Run `cell` over every step of `inputs`; return (outputs, final_state).

    inputs [B, T, I] (or [T, B, I] when `time_major`) → outputs [B, T, H] ([T, B, H]).
    With `sequence_length` [B], row b's outputs past its length are zero and its state
    stops changing there, so `final_state` holds each row's state at its own last step.
    """
    if not isinstance(cell, LSTMCell):
        raise TypeError(f"cell must be an xlstm.LSTMCell, got {type(cell).__name__}")
    xp = namespace_of(inputs=inputs, weights=cell.weights)
    cell.check_inputs("inputs", inputs, xp)
    check_shape("inputs", inputs, (None, None, cell.input_size), "[T, B, I]" if time_major else "[B, T, I]")
    x = inputs if time_major else xp.permute_dims(inputs, (1, 0, 2))  # [T, B, I]
    steps, batch = x.shape[0], x.shape[1]
    state = cell.zero_state(batch) if initial_state is None else cell.check_state("initial_state", initial_state, batch, xp)
    namespace_of(inputs=inputs, initial_state_c=state.c, initial_state_h=state.h)
    valid = _valid_steps(sequence_length, steps, batch, inputs, xp)  # [T, B, 1] booleans, or None

    bias, input_weights, recurrent_weights = cell.split_weights()
    # The input projection of all steps at once: one [T·B, I] × [I, 4H] matmul.
    x_projected = xp.reshape(
        xp.reshape(x, (steps * batch, cell.input_size)) @ xp.matrix_transpose(input_weights),
        (steps, batch, 4 * cell.num_units),
    )
    if not cell.layer_norm:
        x_projected = x_projected + bias
    recurrent_t = xp.matrix_transpose(recurrent_weights)  # [H, 4H], transposed once
    masks = cell.dropout_masks((steps, batch, cell.num_units))
    settings = cell.settings

    outputs = []
    for t in range(steps):
        mask = None if masks is None else masks[t, ...]
        values = lstm_step(x_projected[t, ...] + state.h @ recurrent_t, state.c, settings,
                           cell.norm_gain, cell.norm_shift, mask)
        if valid is None:
            state = LSTMState(values.c, values.h)
            outputs.append(values.h)
        else:
            keep = valid[t, ...]
            state = LSTMState(xp.where(keep, values.c, state.c), xp.where(keep, values.h, state.h))
            outputs.append(xp.where(keep, values.h, xp.zeros_like(values.h)))
    stacked = xp.stack(outputs, axis=0) if outputs else xp.zeros(
        (0, batch, cell.num_units), dtype=cell.dtype, device=device_of(inputs))
    return (stacked if time_major else xp.permute_dims(stacked, (1, 0, 2))), state


def _valid_steps(sequence_length: Any, steps: int, batch: int, like: Any, xp: Any) -> Any:
    """[T, B, 1] booleans, True where step t < sequence_length[b]; None without lengths."""
    if sequence_length is None:
        return None
    if isinstance(sequence_length, (list, tuple)):
        sequence_length = asarray(sequence_length, backend=_backend_name(like), device=device_of(like))
    namespace_of(inputs=like, sequence_length=sequence_length)
    check_integer("sequence_length", sequence_length, xp)
    check_shape("sequence_length", sequence_length, (batch,), "one length per batch row")
    check_range("sequence_length", sequence_length, xp, 0, steps, "number of time steps")
    positions = xp.arange(steps, device=device_of(like))
    return (positions[:, None] < sequence_length[None, :])[:, :, None]


def _backend_name(x: Any) -> str:
    from backends import library_of

    return library_of(x).name
