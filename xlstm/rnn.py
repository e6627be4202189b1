"""`dynamic_rnn`: unroll a cell over a sequence, like TensorFlow's `tf.nn.dynamic_rnn`,
and `dynamic_rnn_vjp`, the same forward pass plus backpropagation through time."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

from xlstm_backends import asarray, library_of
from xlstm.cell import LSTMCell, LSTMState, lstm_step
from xlstm.cell_grad import lstm_step_vjp
from xlstm.checks import check_integer, check_no_booleans, check_range, check_shape, device_of, namespace_of
from xlstm.recurrent_cell import RecurrentCell, Unrolling
from xlstm.stack import MultiRNNCell
from xlstm.table_rows import LookedUp, TableRows, look_up, table_gradient


class Unrolled(NamedTuple):
    """A checked, time-major view of one dynamic_rnn call and what its forward computed."""

    xp: Any
    inputs: Any  # [T, B, I]
    outputs: Any  # [T, B, H]
    final_state: LSTMState
    valid: Any  # [T, B, 1] booleans, or None without sequence_length
    masks: Any  # [T, B, H] dropout masks, or None
    preactivations: list  # a_t, [B, 4H] each (kept only for the backward pass)
    states: list  # the state entering each step (kept only for the backward pass)
    kernels: Any = None  # the backend's fused kernels when they ran the loop
    kernel_cache: Any = None  # what their backward pass needs
    looked_up: LookedUp | None = None  # where the inputs came from, when given as TableRows


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
    A `MultiRNNCell` runs layer by layer; its states are tuples, bottom layer first.
    `inputs` may be `TableRows(table, ids)`: the rows table[ids], ids [B, T] ([T, B]).
    """
    if isinstance(cell, MultiRNNCell):
        outputs, final_state, _ = _stack_vjp(cell, inputs, initial_state, sequence_length, time_major, False)
        return outputs, final_state
    if isinstance(cell, RecurrentCell):
        outputs, final_state, _ = _self_unrolled(cell, inputs, initial_state, sequence_length, time_major, False)
        return outputs, final_state
    run = _unroll(cell, inputs, initial_state, sequence_length, time_major, keep_for_backward=False)
    return _batch_major(run.xp, run.outputs, time_major), run.final_state


def dynamic_rnn_vjp(
    cell: LSTMCell,
    inputs: Any,
    initial_state: LSTMState | None = None,
    sequence_length: Any = None,
    time_major: bool = False,
) -> tuple[Any, LSTMState, Callable[..., dict[str, Any]]]:
    """`dynamic_rnn` plus a `backward(d_outputs, d_final_state)` closure (BPTT).

    `backward` takes the gradients of a loss w.r.t. the outputs and the final state
    (either may be None, meaning zero) and returns a dict: "weights" (and "norm_gain",
    "norm_shift" under layer norm) shaped like the parameters, "inputs" shaped like the
    inputs (for `TableRows` inputs: the table's gradient, each position's row added to its id's)
    and "initial_state" (an LSTMState). Padded steps pass no gradient. For a
    `MultiRNNCell` the parameter keys are those of `cell.parameters()` ("cell_K/weights", ...)
    and the states are tuples, bottom layer first.
    """
    if isinstance(cell, MultiRNNCell):
        return _stack_vjp(cell, inputs, initial_state, sequence_length, time_major, True)
    if isinstance(cell, RecurrentCell):
        return _self_unrolled(cell, inputs, initial_state, sequence_length, time_major, True)
    run = _unroll(cell, inputs, initial_state, sequence_length, time_major, keep_for_backward=True)

    def backward(d_outputs: Any = None, d_final_state: LSTMState | None = None) -> dict[str, Any]:
        return _backpropagate(cell, run, d_outputs, d_final_state, time_major)

    return _batch_major(run.xp, run.outputs, time_major), run.final_state, backward


def _stack_vjp(stack: MultiRNNCell, inputs, initial_state, sequence_length, time_major, with_backward):
    """Run the layers one after another (the same numbers as interleaving them per step)."""
    states = [None] * len(stack.cells) if initial_state is None else stack.check_state("initial_state", initial_state)
    if not with_backward:
        finals = []
        for cell, state in zip(stack.cells, states):
            inputs, final = dynamic_rnn(cell, inputs, state, sequence_length, time_major)
            finals.append(final)
        return inputs, tuple(finals), None
    runs = [lambda x, state, cell=cell: dynamic_rnn_vjp(cell, x, state, sequence_length, time_major)
            for cell in stack.cells]
    return chain_vjp(runs, inputs, states, "cell", lambda d_state: stack.check_state("d_final_state", d_state))


def chain_vjp(runs: list[Callable], inputs: Any, initial_states: list, prefix: str,
              check_final_state: Callable[[Any], tuple]) -> tuple[Any, tuple, Callable[..., dict[str, Any]]]:
    """Layers run one after another, each `run(inputs, state)` → (outputs, final, backward);
    the chained backward walks them in reverse and keys layer k's gradients "{prefix}_k/NAME"."""
    finals, backwards = [], []
    for run, state in zip(runs, initial_states):
        inputs, final, layer_backward = run(inputs, state)
        finals.append(final)
        backwards.append(layer_backward)

    def backward(d_outputs: Any = None, d_final_state: tuple | None = None) -> dict[str, Any]:
        d_finals = [None] * len(runs) if d_final_state is None else check_final_state(d_final_state)
        grads: dict[str, Any] = {}
        d_initial = [None] * len(runs)
        for k in reversed(range(len(runs))):
            layer = backwards[k](d_outputs, d_finals[k])
            d_outputs, d_initial[k] = layer.pop("inputs"), layer.pop("initial_state")
            grads.update({f"{prefix}_{k}/{name}": value for name, value in layer.items()})
        return {**dict(sorted(grads.items())), "inputs": d_outputs, "initial_state": tuple(d_initial)}

    return inputs, tuple(finals), backward


def _checked_inputs(cell: Any, inputs: Any, time_major: bool) -> tuple[Any, Any, LookedUp | None]:
    """(xp, the inputs as a time-major [T, B, I] array, the lookup when they came as TableRows)."""
    if isinstance(inputs, TableRows):  # rows of a table, read here: x = table[ids]
        xp = namespace_of(inputs_table=inputs.table, **cell.parameters())
        cell.check_inputs("inputs.table", inputs.table, xp)
        looked_up = look_up(inputs, time_major)
        return xp, looked_up.inputs, looked_up
    xp = namespace_of(inputs=inputs, **cell.parameters())
    cell.check_inputs("inputs", inputs, xp)
    check_shape("inputs", inputs, (None, None, cell.input_size), "[T, B, I]" if time_major else "[B, T, I]")
    return xp, inputs if time_major else xp.permute_dims(inputs, (1, 0, 2)), None


def _self_unrolled(cell: RecurrentCell, inputs, initial_state, sequence_length, time_major, with_backward):
    """A cell that runs its own time loop (`RecurrentCell.unroll`), with the same checks and layouts."""
    xp, x, looked_up = _checked_inputs(cell, inputs, time_major)
    steps, batch = x.shape[0], x.shape[1]
    state = cell.zero_state(batch) if initial_state is None else cell.check_state("initial_state", initial_state,
                                                                                  batch, xp)
    namespace_of(inputs=x, **{f"initial_state_{part}": value for part, value in zip(state._fields, state)})
    valid = _valid_steps(sequence_length, steps, batch, x, xp)
    run = cell.unroll(x, state, valid, with_backward)
    outputs = _batch_major(xp, run.outputs, time_major)
    if not with_backward:
        return outputs, run.final_state, None

    def backward(d_outputs: Any = None, d_final_state: Any = None) -> dict[str, Any]:
        d_out = _checked_cotangent("d_outputs", d_outputs, run, time_major)
        d_final = None if d_final_state is None else cell.check_state("d_final_state", d_final_state, batch, xp)
        grads = run.backward(d_out, d_final)
        grads["inputs"] = _input_gradient(looked_up, xp, grads["inputs"], time_major)
        return grads

    return outputs, run.final_state, backward


def _unroll(cell, inputs, initial_state, sequence_length, time_major, keep_for_backward) -> Unrolled:
    """Check the arguments, then run the time loop once (shared by forward and vjp)."""
    if not isinstance(cell, LSTMCell):
        raise TypeError(f"cell must be an xlstm.LSTMCell, SLSTMCell, MLSTMCell or MultiRNNCell, "
                        f"got {type(cell).__name__}")
    xp, x, looked_up = _checked_inputs(cell, inputs, time_major)
    steps, batch = x.shape[0], x.shape[1]
    state = cell.zero_state(batch) if initial_state is None else cell.check_state("initial_state", initial_state, batch, xp)
    namespace_of(inputs=x, initial_state_c=state.c, initial_state_h=state.h)
    valid = _valid_steps(sequence_length, steps, batch, x, xp)
    masks = cell.dropout_masks((steps, batch, cell.num_units))
    library = cell.backend.library
    kernels = library.lstm_layer_norm_kernels() if cell.layer_norm else library.lstm_kernels()
    if kernels is not None:  # the backend's fused loop: the same numbers, fewer allocations
        norms = dict(norm_gain=cell.norm_gain, norm_shift=cell.norm_shift,
                     norm_epsilon=cell.norm_epsilon) if cell.layer_norm else {}
        outputs, c, h, cache = kernels.lstm_forward(x, cell.weights, state.c, state.h, cell.forget_bias,
                                                    masks, valid, keep_for_backward, **norms)
        return Unrolled(xp, x, outputs, LSTMState(c, h), valid, masks, [], [], kernels, cache, looked_up)

    bias, input_weights, recurrent_weights = cell.split_weights()
    # The input projection of all steps at once: one [T·B, I] × [I, 4H] matmul.
    x_projected = xp.reshape(
        xp.reshape(x, (steps * batch, cell.input_size)) @ xp.matrix_transpose(input_weights),
        (steps, batch, 4 * cell.num_units),
    )
    if not cell.layer_norm:  # under layer norm the norm's shift plays the bias
        x_projected = x_projected + bias
    recurrent_t = xp.matrix_transpose(recurrent_weights)  # [H, 4H], transposed once
    settings = cell.settings

    outputs, preactivations, states = [], [], []
    for t in range(steps):
        a = x_projected[t, ...] + state.h @ recurrent_t  # [B, 4H]
        values = lstm_step(a, state.c, settings, cell.norm_gain, cell.norm_shift,
                           None if masks is None else masks[t, ...])
        if keep_for_backward:
            preactivations.append(a)
            states.append(state)
        if valid is None:
            state = LSTMState(values.c, values.h)
            outputs.append(values.h)
        else:
            keep = valid[t, ...]
            state = LSTMState(xp.where(keep, values.c, state.c), xp.where(keep, values.h, state.h))
            outputs.append(xp.where(keep, values.h, xp.zeros_like(values.h)))
    stacked = xp.stack(outputs, axis=0) if outputs else xp.zeros(
        (0, batch, cell.num_units), dtype=cell.dtype, device=device_of(x))
    return Unrolled(xp, x, stacked, state, valid, masks, preactivations, states, looked_up=looked_up)


def _backpropagate(cell: LSTMCell, run: Unrolled, d_outputs: Any, d_final_state: Any, time_major: bool) -> dict:
    """Walk the steps backwards, then form the weight gradients with one matmul each."""
    xp, x = run.xp, run.inputs
    steps, batch, units = x.shape[0], x.shape[1], cell.num_units
    zeros = xp.zeros((batch, units), dtype=cell.dtype, device=device_of(x))
    d_out = _checked_cotangent("d_outputs", d_outputs, run, time_major)
    if d_final_state is None:
        dc, dh = zeros, zeros
    else:
        dc, dh = cell.check_state("d_final_state", d_final_state, batch, xp)
    to_table = getattr(run.kernels, "lstm_backward_to_table", None)
    if run.looked_up is not None and to_table is not None:  # the kernel forms the table's gradient itself
        d_weights, d_table, dc, dh = to_table(run.kernel_cache, d_out, dc, dh, run.looked_up.table,
                                              run.looked_up.flat_ids)
        return {"weights": d_weights, "inputs": d_table, "initial_state": LSTMState(dc, dh)}
    if run.kernels is not None:
        d_weights, d_inputs, dc, dh, *d_norms = run.kernels.lstm_backward(run.kernel_cache, d_out, dc, dh)
        result = {"weights": d_weights, "inputs": _input_gradient(run.looked_up, run.xp, d_inputs, time_major),
                  "initial_state": LSTMState(dc, dh)}
        if cell.layer_norm:  # the layer-norm kernels also return the norms' gradients
            result["norm_gain"], result["norm_shift"] = d_norms
        return result
    _, input_weights, recurrent_weights = cell.split_weights()
    d_gain = d_shift = None
    d_preactivations = [None] * steps
    for t in reversed(range(steps)):
        dh_step, dc_step = (dh if d_out is None else dh + d_out[t, ...]), dc
        if run.valid is not None:  # a padded step passes its state's gradient straight through
            keep = run.valid[t, ...]
            dh_step, dc_step = xp.where(keep, dh_step, zeros), xp.where(keep, dc_step, zeros)
            dh_skip, dc_skip = xp.where(keep, zeros, dh), xp.where(keep, zeros, dc)
        grads = lstm_step_vjp(run.preactivations[t], run.states[t].c, dh_step, dc_step, cell.settings,
                              cell.norm_gain, cell.norm_shift, None if run.masks is None else run.masks[t, ...])
        d_preactivations[t] = grads.preactivations
        dh, dc = grads.preactivations @ recurrent_weights, grads.c_prev
        if run.valid is not None:
            dh, dc = dh + dh_skip, dc + dc_skip
        if cell.layer_norm:
            d_gain = grads.norm_gain if d_gain is None else d_gain + grads.norm_gain
            d_shift = grads.norm_shift if d_shift is None else d_shift + grads.norm_shift

    rows = steps * batch
    d_a = xp.reshape(xp.stack(d_preactivations, axis=0), (rows, 4 * units)) if steps else xp.zeros(
        (0, 4 * units), dtype=cell.dtype, device=device_of(x))
    previous_h = xp.reshape(xp.stack([s.h for s in run.states], axis=0), (rows, units)) if steps else xp.zeros(
        (0, units), dtype=cell.dtype, device=device_of(x))
    d_a_t = xp.matrix_transpose(d_a)  # [4H, T·B]
    d_bias = xp.zeros((4 * units,), dtype=cell.dtype, device=device_of(x)) if cell.layer_norm else xp.sum(d_a, axis=0)
    d_weights = xp.concat([d_bias[:, None], d_a_t @ xp.reshape(x, (rows, cell.input_size)), d_a_t @ previous_h],
                          axis=1)
    d_inputs = xp.reshape(d_a @ input_weights, (steps, batch, cell.input_size))
    result = {"weights": d_weights, "inputs": _input_gradient(run.looked_up, run.xp, d_inputs, time_major),
              "initial_state": LSTMState(dc, dh)}
    if cell.layer_norm:
        no_steps = xp.zeros_like(cell.norm_gain)
        result["norm_gain"] = no_steps if d_gain is None else d_gain
        result["norm_shift"] = no_steps if d_shift is None else d_shift
    return result


def _checked_cotangent(name: str, d_outputs: Any, run: Unrolled | Unrolling, time_major: bool) -> Any:
    """d_outputs as a time-major [T, B, H] array of the outputs' backend and dtype, or None."""
    if d_outputs is None:
        return None
    xp = namespace_of(**{name: d_outputs, "outputs": run.outputs})
    expected = tuple(run.outputs.shape)
    check_shape(name, d_outputs, expected if time_major else (expected[1], expected[0], expected[2]),
                "like the outputs")
    if d_outputs.dtype != run.outputs.dtype:
        raise TypeError(f"{name} must have the outputs' dtype {run.outputs.dtype}, got {d_outputs.dtype}")
    return d_outputs if time_major else xp.permute_dims(d_outputs, (1, 0, 2))


def _input_gradient(looked_up: LookedUp | None, xp: Any, d_inputs: Any, time_major: bool) -> Any:
    """The inputs' gradient from the time-major d_inputs [T, B, I]: shaped like the inputs, or the table's
    gradient when they were TableRows."""
    if looked_up is not None:
        return table_gradient(looked_up, d_inputs, library_of(d_inputs))
    return _batch_major(xp, d_inputs, time_major)


def _batch_major(xp: Any, time_major_array: Any, time_major: bool) -> Any:
    return time_major_array if time_major else xp.permute_dims(time_major_array, (1, 0, 2))


def _valid_steps(sequence_length: Any, steps: int, batch: int, like: Any, xp: Any) -> Any:
    """[T, B, 1] booleans, True where step t < sequence_length[b]; None without lengths."""
    lengths = checked_lengths(sequence_length, steps, batch, like, xp)
    if lengths is None:
        return None
    positions = xp.arange(steps, device=device_of(like))
    return (positions[:, None] < lengths[None, :])[:, :, None]


def checked_lengths(sequence_length: Any, steps: int, batch: int, like: Any, xp: Any) -> Any:
    """`sequence_length` as an integer [B] array on `like`'s backend, each in [0, steps]; or None."""
    if sequence_length is None:
        return None
    if isinstance(sequence_length, (list, tuple)):
        check_no_booleans("sequence_length", sequence_length)
        sequence_length = asarray(sequence_length, backend=library_of(like).name, device=device_of(like))
    namespace_of(inputs=like, sequence_length=sequence_length)
    check_integer("sequence_length", sequence_length, xp)
    check_shape("sequence_length", sequence_length, (batch,), "one length per batch row")
    check_range("sequence_length", sequence_length, xp, 0, steps, "number of time steps")
    return sequence_length
