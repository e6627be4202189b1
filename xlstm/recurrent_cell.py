"""`RecurrentCell`: what the xLSTM cells (sLSTM, mLSTM) share, and the one method `dynamic_rnn` asks of them.

`LSTMCell`'s time loop lives in `xlstm.rnn` (with its fused kernels); every other cell unrolls
itself: `cell.unroll(x, state, valid, with_backward)` runs a whole, checked, time-major sequence
and returns an `Unrolling`. Everything around that call (argument checks, batch- or time-major
layout, table lookups, stacks, reversed and bidirectional layers, save/load) is shared.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

from xlstm_backends import Backend, asarray, dtype_name, get_backend
from xlstm.checks import check_bool, check_float, check_positive_int, check_shape, device_of, namespace_of


class Unrolling(NamedTuple):
    """What a cell's `unroll` returns: time-major outputs, the final state and, when asked, the backward pass.

    `backward(d_outputs, d_final_state)` takes [T, B, H] output gradients and a state's gradient
    (either may be None, meaning zero) and returns {parameter name: gradient, "inputs": [T, B, I],
    "initial_state": the state's gradient}.
    """

    outputs: Any
    final_state: Any
    backward: Callable[..., dict[str, Any]] | None


class RecurrentCell:
    """Base of the cells that unroll themselves. Subclasses set `state_type` (a NamedTuple class) and define
    `state_shapes`, `parameters`, `config` and `unroll`; their constructors take `config()`'s keys,
    each parameter by name, `dtype` and `backend`."""

    state_type: type
    num_units: int
    input_size: int
    dtype: Any
    backend: Backend

    def _set_up(self, num_units: int, input_size: int, dtype: Any, backend: str | Backend | None,
                device: Any, like: Any) -> None:
        """The settings every cell checks and keeps the same way; `like` is a given parameter array (or None)."""
        self.num_units = check_positive_int("num_units", num_units)
        self.input_size = check_positive_int("input_size", input_size)
        self.backend = get_backend(backend, device)
        given = getattr(like, "dtype", None)
        self.dtype = self.backend.resolve_dtype(
            dtype, "float64" if given is not None and dtype_name(given) == "float64" else "float32")
        self.training = True
        self.dropout_rows: tuple[slice, int] | None = None  # no dropout here; kept for the stacks' interface

    def _set_heads(self, num_heads: int) -> None:
        """The units split into `num_heads` heads of head_size = num_units / num_heads each."""
        self.num_heads = check_positive_int("num_heads", num_heads)
        if self.num_units % self.num_heads:
            raise ValueError(f"num_heads must divide num_units {self.num_units}, got {self.num_heads}")
        self.head_size = self.num_units // self.num_heads

    def parameter(self, name: str, value: Any, shape: tuple[int, ...], what: str) -> Any:
        """A given parameter moved onto the cell's backend and dtype, its shape checked."""
        array = asarray(value, dtype=self.dtype, backend=self.backend)
        check_shape(name, array, shape, what)
        return array

    @property
    def output_size(self) -> int:
        return self.num_units

    @property
    def state_size(self) -> Any:
        return self.state_shapes(None)

    def state_shapes(self, batch_size: int | None) -> Any:
        """The shape of each part of the state, as a `state_type`."""
        raise NotImplementedError

    def parameters(self) -> dict[str, Any]:
        """The trainable arrays, keyed like the gradients of `dynamic_rnn_vjp`."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The constructor's settings (without arrays), to rebuild or save the cell."""
        raise NotImplementedError

    def unroll(self, x: Any, state: Any, valid: Any, with_backward: bool) -> Unrolling:
        """Run x [T, B, I] from `state`; `valid` [T, B, 1] (or None) marks the steps inside each row's length:
        outside them outputs are zero and the state is carried unchanged."""
        raise NotImplementedError

    def zero_state(self, batch_size: int) -> Any:
        """An all-zero state for `batch_size` rows."""
        check_positive_int("batch_size", batch_size)
        xp = self.backend.xp
        return self.state_type(*(xp.zeros(shape, dtype=self.dtype, device=self.backend.device)
                                 for shape in self.state_shapes(batch_size)))

    def check_inputs(self, name: str, x: Any, xp: Any) -> None:
        """`x` must be a float array of the cell's dtype whose last axis is input_size."""
        check_float(name, x, xp, self.dtype)
        if x.ndim < 2 or x.shape[-1] != self.input_size:
            raise ValueError(f"{name} must have its last axis equal to the cell's input_size {self.input_size}, "
                             f"got shape {list(x.shape)}")

    def check_state(self, name: str, state: Any, batch_size: int, xp: Any) -> Any:
        """`state` must be a `state_type` (or a tuple of as many parts) of the cell's dtype and shapes."""
        fields = self.state_type._fields
        if not isinstance(state, tuple) or len(state) != len(fields):
            raise TypeError(f"{name} must be a {self.state_type.__name__}({', '.join(fields)}), "
                            f"got {type(state).__name__}")
        state = self.state_type(*state)
        for part, value, shape in zip(fields, state, self.state_shapes(batch_size)):
            namespace_of(x=value)
            check_float(f"{name}.{part}", value, xp, self.dtype)
            check_shape(f"{name}.{part}", value, shape)
        return state

    def __call__(self, x: Any, state: Any = None) -> tuple[Any, Any]:
        """One step: x [B, I] and the state → (h_t [B, H], the new state)."""
        xp = namespace_of(x=x, **self.parameters())
        self.check_inputs("x", x, xp)
        check_shape("x", x, (None, self.input_size), "[batch, input_size]")
        state = self.zero_state(x.shape[0]) if state is None else self.check_state("state", state, x.shape[0], xp)
        namespace_of(x=x, **{f"state_{part}": value for part, value in zip(state._fields, state)})
        run = self.unroll(x[None, ...], state, None, with_backward=False)
        return run.outputs[0, ...], run.final_state

    def train(self, mode: bool = True) -> "RecurrentCell":
        """Training or (mode=False) inference; these cells behave the same in both. Returns self."""
        self.training = check_bool("mode", mode)
        return self

    def eval(self) -> "RecurrentCell":
        return self.train(False)

    def dropout_masks(self, shape: tuple[int, ...]) -> None:
        """These cells have no dropout."""
        return None

    def random_state(self) -> dict:
        """No random stream to save (the stacks save every cell's)."""
        return {}

    def set_random_state(self, state: dict) -> None:
        if state != {}:
            raise ValueError(f"{type(self).__name__} has no random state, got {state!r}")

    def to(self, backend: str | Backend, device: Any = None, dtype: Any = None) -> "RecurrentCell":
        """A copy of this cell on another backend/device (and dtype), arrays moved once."""
        return type(self)(**self.config(), **self.parameters(), dtype=self.dtype if dtype is None else dtype,
                          backend=get_backend(backend, device))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_units={self.num_units}, input_size={self.input_size}, "
                f"backend={self.backend.name!r}, device={device_of(next(iter(self.parameters().values())))!r}, "
                f"dtype={dtype_name(self.dtype)})")


def carry(valid_t: Any, new_state: tuple, old_state: tuple) -> tuple:
    """The new state where the step is inside the row's length (valid_t [B, 1] or None), else the old one."""
    if valid_t is None:
        return new_state
    xp = namespace_of(valid=valid_t)
    return type(new_state)(*(xp.where(_broadcastable(valid_t, new), new, old)
                             for new, old in zip(new_state, old_state)))


def _broadcastable(valid_t: Any, part: Any) -> Any:
    """valid_t [B, 1] reshaped to broadcast against a state part [B, ...]."""
    xp = namespace_of(valid=valid_t)
    return xp.reshape(valid_t, (valid_t.shape[0],) + (1,) * (part.ndim - 1))


def split_gradient(valid_t: Any, d_state: tuple) -> tuple[tuple, tuple]:
    """A state gradient cut in two by valid_t [B, 1] (or None): the part that enters the step (rows inside
    their length) and the part that skips it (padded rows, whose state was carried unchanged)."""
    if valid_t is None:
        return d_state, None
    xp = namespace_of(valid=valid_t)
    inside = type(d_state)(*(xp.where(_broadcastable(valid_t, d), d, xp.zeros_like(d)) for d in d_state))
    skipped = type(d_state)(*(xp.where(_broadcastable(valid_t, d), xp.zeros_like(d), d) for d in d_state))
    return inside, skipped
