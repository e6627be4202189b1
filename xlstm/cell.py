"""The LSTM cell of TensorFlow 1's `LayerNormBasicLSTMCell`, as in the article.

One fused weight matrix W [4H, 1 + I + H]: column 0 is the bias, columns 1..I multiply
the input x_t, the last H columns multiply h_{t-1}; row blocks are the gates f, i, c, o.

    a   = [1, x_t, h_{t-1}] · Wᵀ                      pre-activations   [B, 4H]
    f   = σ(a_f + forget_bias)   i = σ(a_i)           forget and input gates
    g   = tanh(a_c)              o = σ(a_o)           candidate and output gate
    c_t = f ⊙ c_{t-1} + i ⊙ g                         new cell state    [B, H]
    h_t = o ⊙ tanh(c_t)                               new hidden state  [B, H]

With layer norm each gate's pre-activation (without the bias column) and the new cell
state are normalised over their H units, each with its own gain and shift.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from xlstm_backends import Backend, asarray, dtype_name, get_backend
from xlstm import init
from xlstm.checks import (
    check_bool,
    check_float,
    check_positive_int,
    check_shape,
    device_of,
    namespace_of,
)
from xlstm.functional import normalise, sigmoid

GATES = ("f", "i", "c", "o")  # order of the row blocks of W
NORMS = ("f", "i", "c", "o", "state")  # order of the rows of norm_gain / norm_shift


class LSTMState(NamedTuple):
    """The state carried between steps: cell state c and hidden state h, each [B, H]."""

    c: Any
    h: Any


class StepValues(NamedTuple):
    """Everything one step computes, for the walkthrough and (later) the backward pass."""

    preactivations: Any  # a, [B, 4H], before layer norm
    f: Any  # forget gate    [B, H]
    i: Any  # input gate     [B, H]
    g: Any  # candidate      [B, H] (after dropout)
    o: Any  # output gate    [B, H]
    c: Any  # new cell state [B, H]
    h: Any  # new hidden     [B, H]


@dataclass(frozen=True)
class CellSettings:
    """The non-trainable settings of a cell that its step function needs."""

    forget_bias: float
    layer_norm: bool
    norm_epsilon: float


class StepInternals(NamedTuple):
    """Every intermediate of one step, including what the backward pass differentiates."""

    f: Any  # forget gate                          [B, H]
    i: Any  # input gate                           [B, H]
    g_raw: Any  # tanh of the candidate pre-activation, before dropout
    o: Any  # output gate                          [B, H]
    g: Any  # candidate after dropout              [B, H]
    c: Any  # new cell state (normalised under layer norm)
    tanh_c: Any  # tanh(c_t)
    h: Any  # new hidden state                     [B, H]
    gates_normalised: Any = None  # layer norm only: x̂ of the gates [B, 4, H] ...
    gates_inverse_std: Any = None  # ... and their 1/σ                [B, 4, 1]
    c_normalised: Any = None  # x̂ of f⊙c_{t-1} + i⊙g                [B, H]
    c_inverse_std: Any = None  # its 1/σ                             [B, 1]


def lstm_step_internals(
    preactivations: Any,
    c_prev: Any,
    settings: CellSettings,
    norm_gain: Any = None,
    norm_shift: Any = None,
    dropout_mask: Any = None,
) -> StepInternals:
    """The step's arithmetic, stated once for the forward and the backward pass."""
    xp = namespace_of(preactivations=preactivations, c_prev=c_prev, dropout_mask=dropout_mask)
    batch, units = c_prev.shape[0], c_prev.shape[1]
    a, norms = preactivations, {}
    if settings.layer_norm:
        gates_hat, gates_inverse_std = normalise(xp.reshape(a, (batch, 4, units)), settings.norm_epsilon)
        a = xp.reshape(gates_hat * norm_gain[:4, :] + norm_shift[:4, :], (batch, 4 * units))
        norms.update(gates_normalised=gates_hat, gates_inverse_std=gates_inverse_std)
    f = sigmoid(a[:, :units] + settings.forget_bias)
    i = sigmoid(a[:, units : 2 * units])
    g_raw = xp.tanh(a[:, 2 * units : 3 * units])
    o = sigmoid(a[:, 3 * units :])
    g = g_raw if dropout_mask is None else g_raw * dropout_mask
    c = f * c_prev + i * g
    if settings.layer_norm:
        c_hat, c_inverse_std = normalise(c, settings.norm_epsilon)
        c = c_hat * norm_gain[4, :] + norm_shift[4, :]
        norms.update(c_normalised=c_hat, c_inverse_std=c_inverse_std)
    tanh_c = xp.tanh(c)
    return StepInternals(f, i, g_raw, o, g, c, tanh_c, o * tanh_c, **norms)


def lstm_step(
    preactivations: Any,
    c_prev: Any,
    settings: CellSettings,
    norm_gain: Any = None,
    norm_shift: Any = None,
    dropout_mask: Any = None,
) -> StepValues:
    """From the pre-activations a = [1, x, h]·Wᵀ and c_{t-1}, the gates and the new state.

    `dropout_mask` ([B, H], already scaled by 1/keep_prob) multiplies the candidate only.
    """
    k = lstm_step_internals(preactivations, c_prev, settings, norm_gain, norm_shift, dropout_mask)
    return StepValues(preactivations, k.f, k.i, k.g, k.o, k.c, k.h)


class LSTMCell:
    """Holds the parameters and settings of one LSTM cell; `cell(x, state)` runs one step."""

    def __init__(
        self,
        num_units: int,
        input_size: int,
        *,
        forget_bias: float = 1.0,
        layer_norm: bool = False,
        norm_gain: Any = 1.0,
        norm_shift: Any = 0.0,
        norm_epsilon: float = 1e-12,
        dropout_keep_prob: float = 1.0,
        initializer: Any = None,
        bias_initializer: Any = 0.0,
        weights: Any = None,
        dtype: Any = None,
        seed: int | None = None,
        backend: str | Backend | None = None,
        device: Any = None,
    ) -> None:
        self.num_units = check_positive_int("num_units", num_units)
        self.input_size = check_positive_int("input_size", input_size)
        self.forget_bias = _check_number("forget_bias", forget_bias)
        self.layer_norm = bool(layer_norm)
        self.norm_epsilon = _check_number("norm_epsilon", norm_epsilon, positive=True)
        self.dropout_keep_prob = _check_keep_prob(dropout_keep_prob)
        self.training = True  # dropout applies only while training; see train()/eval()
        self.seed = seed
        self.backend = get_backend(backend, device)
        shape = (4 * num_units, 1 + input_size + num_units)
        if weights is not None:
            self.dtype = self.backend.resolve_dtype(dtype, _float_dtype_name(weights))
            self.weights = asarray(weights, dtype=self.dtype, backend=self.backend)
            check_shape("weights", self.weights, shape, "[4H, 1 + I + H]")
        else:
            self.dtype = self.backend.resolve_dtype(dtype)
            self.weights = init.fused_weights(shape, initializer, bias_initializer, self.dtype,
                                              self.backend.random(seed, stream=0))
        if self.layer_norm:
            self.norm_gain = self._norm_parameter("norm_gain", norm_gain)
            self.norm_shift = self._norm_parameter("norm_shift", norm_shift)
        else:
            self.norm_gain = self.norm_shift = None
        self._dropout_stream = self.backend.random(seed, stream=1)
        # Data parallelism: (this process's rows, the global batch size); masks are then drawn for
        # the whole batch and cut to those rows, so every rank draws what one process would.
        self.dropout_rows: tuple[slice, int] | None = None

    def _norm_parameter(self, name: str, value: Any) -> Any:
        """A [5, H] gain or shift (rows f, i, c, o, state) from a float or an array."""
        xp, shape = self.backend.xp, (len(NORMS), self.num_units)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return xp.full(shape, float(value), dtype=self.dtype, device=self.backend.device)
        array = asarray(value, dtype=self.dtype, backend=self.backend)
        check_shape(name, array, shape, "rows f, i, c, o, state")
        return array

    @property
    def settings(self) -> CellSettings:
        return CellSettings(self.forget_bias, self.layer_norm, self.norm_epsilon)

    @property
    def state_size(self) -> LSTMState:
        return LSTMState(self.num_units, self.num_units)

    @property
    def output_size(self) -> int:
        return self.num_units

    def split_weights(self) -> tuple[Any, Any, Any]:
        """W's bias [4H], input weights [4H, I] and recurrent weights [4H, H]."""
        w, inputs_end = self.weights, 1 + self.input_size
        check_shape("cell.weights", w, (4 * self.num_units, inputs_end + self.num_units), "[4H, 1 + I + H]")
        return w[:, 0], w[:, 1:inputs_end], w[:, inputs_end:]

    def zero_state(self, batch_size: int) -> LSTMState:
        """All-zero c and h for `batch_size` rows."""
        check_positive_int("batch_size", batch_size)
        xp = self.backend.xp
        zeros = xp.zeros((batch_size, self.num_units), dtype=self.dtype, device=self.backend.device)
        return LSTMState(zeros, xp.zeros_like(zeros))

    def train(self, mode: bool = True) -> "LSTMCell":
        """Switch to training (dropout on, the default) or, with mode=False, inference; returns self."""
        self.training = check_bool("mode", mode)
        return self

    def eval(self) -> "LSTMCell":
        """Switch to inference: no dropout, no random draws; returns self."""
        return self.train(False)

    def dropout_masks(self, shape: tuple[int, ...]) -> Any:
        """Fresh inverted-dropout masks for the candidate (None when dropout is off or in inference).

        Each element is 1/keep_prob with probability keep_prob and 0 otherwise.
        """
        if not self.training or self.dropout_keep_prob >= 1.0:
            return None
        xp, keep = self.backend.xp, self.dropout_keep_prob
        if self.dropout_rows is None:
            draws = self._dropout_stream.uniform(shape, 0.0, 1.0, self.dtype)
        else:  # shape is [..., rows, H]: draw [..., global batch, H] and keep this process's rows
            rows, batch_size = self.dropout_rows
            draws = self._dropout_stream.uniform((*shape[:-2], batch_size, shape[-1]), 0.0, 1.0, self.dtype)
            draws = draws[..., rows, :]
        return xp.where(draws < keep, xp.full_like(draws, 1.0 / keep), xp.zeros_like(draws))

    def random_state(self) -> dict:
        """The dropout generator's state (JSON-able), so a resumed run draws the same masks."""
        return self._dropout_stream.state()

    def set_random_state(self, state: dict) -> None:
        """Restore a state returned by `random_state()`."""
        self._dropout_stream.set_state(state)

    def check_inputs(self, name: str, x: Any, xp: Any) -> None:
        """`x` must be a float array of the cell's dtype whose last axis is input_size."""
        check_float(name, x, xp, self.dtype)
        if x.ndim < 2 or x.shape[-1] != self.input_size:
            raise ValueError(
                f"{name} must have its last axis equal to the cell's input_size {self.input_size}, "
                f"got shape {list(x.shape)}"
            )

    def check_state(self, name: str, state: Any, batch_size: int, xp: Any) -> LSTMState:
        """`state` must be an LSTMState (c, h) of [batch_size, H] arrays of the cell's dtype."""
        if not (isinstance(state, tuple) and len(state) == 2):
            raise TypeError(f"{name} must be an LSTMState(c, h), got {type(state).__name__}")
        state = LSTMState(*state)
        for part, value in zip(("c", "h"), state):
            namespace_of(x=value)  # clear error for lists and foreign objects
            check_float(f"{name}.{part}", value, xp, self.dtype)
            check_shape(f"{name}.{part}", value, (batch_size, self.num_units), "[batch, num_units]")
        return state

    def __call__(self, x: Any, state: LSTMState | None = None) -> tuple[Any, LSTMState]:
        """One step: x [B, I] and state (c, h) [B, H] each → (h_t, LSTMState(c_t, h_t))."""
        xp = namespace_of(x=x, weights=self.weights)
        self.check_inputs("x", x, xp)
        check_shape("x", x, (None, self.input_size), "[batch, input_size]")
        state = self.zero_state(x.shape[0]) if state is None else self.check_state("state", state, x.shape[0], xp)
        namespace_of(x=x, state_c=state.c, state_h=state.h)
        values = self.step(x, state, self.dropout_masks((x.shape[0], self.num_units)))
        return values.h, LSTMState(values.c, values.h)

    def step(self, x: Any, state: LSTMState, dropout_mask: Any = None) -> StepValues:
        """The whole step with every intermediate value (no argument checks)."""
        xp = self.backend.xp
        bias, input_weights, recurrent_weights = self.split_weights()
        a = x @ xp.matrix_transpose(input_weights) + state.h @ xp.matrix_transpose(recurrent_weights)
        if not self.layer_norm:  # under layer norm the norm's shift plays the bias
            a = a + bias
        return lstm_step(a, state.c, self.settings, self.norm_gain, self.norm_shift, dropout_mask)

    def parameters(self) -> dict[str, Any]:
        """The trainable arrays, keyed like the gradients of `dynamic_rnn_vjp`."""
        if self.layer_norm:
            return {"weights": self.weights, "norm_gain": self.norm_gain, "norm_shift": self.norm_shift}
        return {"weights": self.weights}

    def config(self) -> dict[str, Any]:
        """The constructor's settings (without arrays), to rebuild or save the cell."""
        return {
            "num_units": self.num_units,
            "input_size": self.input_size,
            "forget_bias": self.forget_bias,
            "layer_norm": self.layer_norm,
            "norm_epsilon": self.norm_epsilon,
            "dropout_keep_prob": self.dropout_keep_prob,
            "seed": self.seed,
        }

    def to(self, backend: str | Backend, device: Any = None, dtype: Any = None) -> "LSTMCell":
        """A copy of this cell on another backend/device (and dtype), arrays moved once."""
        target = get_backend(backend, device)
        return LSTMCell(
            **self.config(),
            weights=self.weights,
            norm_gain=1.0 if self.norm_gain is None else self.norm_gain,
            norm_shift=0.0 if self.norm_shift is None else self.norm_shift,
            dtype=self.dtype if dtype is None else dtype,
            backend=target,
        )

    def __repr__(self) -> str:
        extras = ", layer_norm=True" if self.layer_norm else ""
        return (
            f"LSTMCell(num_units={self.num_units}, input_size={self.input_size}{extras}, "
            f"backend={self.backend.name!r}, device={device_of(self.weights)!r}, dtype={dtype_name(self.dtype)})"
        )


def _float_dtype_name(array: Any) -> str:
    """'float64' for a float64 array of any backend, else 'float32' (lists, ints, float32)."""
    dtype = getattr(array, "dtype", None)
    return "float64" if dtype is not None and dtype_name(dtype) == "float64" else "float32"


def _check_number(name: str, value: Any, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return float(value)


def _check_keep_prob(value: Any) -> float:
    keep = _check_number("dropout_keep_prob", value)
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"dropout_keep_prob must lie in (0, 1], got {value!r}")
    return keep
