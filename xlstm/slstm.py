"""The sLSTM cell of xLSTM (Beck et al., "xLSTM: Extended Long Short-Term Memory", 2024).

An LSTM with an exponential input gate, a normaliser state n and a stabiliser state m, and a
recurrence split into heads. Hidden size H = num_units, NH = num_heads, head size DH = H / NH.
Gates in the order i, f, z, o (NX-AI's); each row block of H units lists the heads in order.

    a      = [1, x_t] · Wᵀ + R h_{t-1}                pre-activations ĩ, f̃, z̃, õ  [B, 4H]
                                                    (R block-diagonal: head k reads only h's head k)
    m_t    = max(log σ(f̃) + m_{t-1}, ĩ)              stabiliser; ĩ where n_{t-1} = 0 (first step)
    i'     = min(exp(ĩ − m_t), 1)                    input gate, stabilised
    f'     = min(exp(log σ(f̃) + m_{t-1} − m_t), 1)   forget gate, stabilised
    c_t    = f' c_{t-1} + i' tanh(z̃)                 cell state
    n_t    = f' n_{t-1} + i'                         normaliser
    h_t    = σ(õ) c_t / n_t                          hidden state and output

Why m_t: the input gate is exp(ĩ), which overflows for ĩ above ~88 (float32) or ~709 (float64).
Every term of c and n carries a product of such gates, so both are kept divided by exp(m_t), the
largest exponent so far: the exponents ĩ − m_t and log f + m_{t-1} − m_t are then ≤ 0, the gates
≤ 1, and h = σ(õ) c/n is unchanged because the common factor exp(−m_t) cancels in c/n.

Parameters (the layout NX-AI's vanilla kernel computes with):
    weights            [4H, 1 + I]      column 0 the bias, columns 1..I the input weights
    recurrent_weights  [NH, 4·DH, DH]   head k: rows gates i, f, z, o × its DH units,
                                        columns its DH hidden units
State: SLSTMState(c, n, m, h), each [B, H]. The backward pass is in `xlstm.slstm_grad`.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

from xlstm_backends import Backend
from xlstm.checks import device_of, namespace_of
from xlstm.functional import sigmoid
from xlstm.recurrent_cell import RecurrentCell, Unrolling, carry

GATES = ("i", "f", "z", "o")  # order of the row blocks of the weights and of the pre-activations


class SLSTMState(NamedTuple):
    """The state carried between steps: cell state c, normaliser n, stabiliser m and hidden h, each [B, H]."""

    c: Any
    n: Any
    m: Any
    h: Any


class SLSTMStepInternals(NamedTuple):
    """Every intermediate of one step, named as in the equations; the backward pass differentiates them."""

    i_raw: Any  # ĩ                                      [B, H]
    f_raw: Any  # f̃                                      [B, H]
    z_raw: Any  # z̃                                      [B, H]
    o_raw: Any  # õ                                      [B, H]
    log_f_plus_m: Any  # log σ(f̃) + m_{t-1}            [B, H]
    first: Any  # n_{t-1} == 0: the first-step rule m_t = ĩ  [B, H] booleans
    m: Any  # m_t                                        [B, H]
    i: Any  # i' = min(exp(ĩ − m_t), 1)                   [B, H]
    f: Any  # f' = min(exp(log σ(f̃) + m_{t-1} − m_t), 1)  [B, H]
    z: Any  # tanh(z̃)                                    [B, H]
    o: Any  # σ(õ)                                       [B, H]
    c: Any  # c_t                                        [B, H]
    n: Any  # n_t                                        [B, H]
    h: Any  # h_t                                        [B, H]


def log_sigmoid(x: Any) -> Any:
    """log σ(x) = min(x, 0) − log(1 + e^-|x|), which neither overflows nor loses the tails."""
    xp = namespace_of(x=x)
    return xp.minimum(x, xp.zeros_like(x)) - xp.log1p(xp.exp(-xp.abs(x)))


def slstm_step_internals(preactivations: Any, previous: SLSTMState) -> SLSTMStepInternals:
    """One step's pointwise arithmetic from a [B, 4H] and the previous state, stated once for both passes."""
    xp = namespace_of(preactivations=preactivations, c_prev=previous.c)
    units = previous.c.shape[1]
    i_raw, f_raw, z_raw, o_raw = (preactivations[:, k * units:(k + 1) * units] for k in range(4))
    one = xp.ones_like(i_raw)
    log_f_plus_m = log_sigmoid(f_raw) + previous.m
    first = previous.n == 0.0  # per element; NX-AI checks all(n == 0) over the whole batch
    m = xp.where(first, i_raw, xp.maximum(log_f_plus_m, i_raw))
    i = xp.minimum(xp.exp(i_raw - m), one)
    f = xp.minimum(xp.exp(log_f_plus_m - m), one)
    z, o = xp.tanh(z_raw), sigmoid(o_raw)
    c = f * previous.c + i * z
    n = f * previous.n + i
    return SLSTMStepInternals(i_raw, f_raw, z_raw, o_raw, log_f_plus_m, first, m, i, f, z, o, c, n, o * c / n)


def headwise_full(blocks: Any) -> Any:
    """Per-head blocks [NH, R, C] as the one block-diagonal [NH·R, NH·C] matrix they stand for (zero where
    a row's head differs from the column's)."""
    xp = namespace_of(blocks=blocks)
    heads, rows, columns = blocks.shape
    same_head = xp.eye(heads, dtype=blocks.dtype, device=device_of(blocks))
    full = blocks[:, :, None, :] * same_head[:, None, :, None]  # [NH, R, NH, C]
    return xp.reshape(full, (heads * rows, heads * columns))


def block_diagonal(recurrent_weights: Any) -> Any:
    """R [NH, 4·DH, DH] as one [4H, H] matrix: row blocks i, f, z, o, each block-diagonal over the heads.
    Then R h_{t-1} is one matmul, in the pre-activations' order."""
    xp = namespace_of(recurrent_weights=recurrent_weights)
    head_size = recurrent_weights.shape[2]
    return xp.concat([headwise_full(recurrent_weights[:, g * head_size:(g + 1) * head_size, :]) for g in range(4)],
                     axis=0)


def head_blocks(full: Any, heads: int) -> Any:
    """The inverse of `block_diagonal`: a [4H, H] matrix's diagonal blocks as [NH, 4·DH, DH] (the rest dropped)."""
    xp = namespace_of(full=full)
    head_size = full.shape[1] // heads
    blocks = xp.reshape(full, (4, heads, head_size, heads, head_size))
    same_head = xp.eye(heads, dtype=full.dtype, device=device_of(full))
    diagonal = xp.sum(blocks * same_head[None, :, None, :, None], axis=3)  # [4, NH, DH, DH]
    return xp.reshape(xp.permute_dims(diagonal, (1, 0, 2, 3)), (heads, 4 * head_size, head_size))


class SLSTMCell(RecurrentCell):
    """Holds the parameters of one sLSTM cell (H = num_units units in `num_heads` heads)."""

    state_type = SLSTMState

    def __init__(
        self,
        num_units: int,
        input_size: int,
        *,
        num_heads: int = 1,
        weights: Any = None,
        recurrent_weights: Any = None,
        dtype: Any = None,
        seed: int | None = None,
        backend: str | Backend | None = None,
        device: Any = None,
    ) -> None:
        self._set_up(num_units, input_size, dtype, backend, device,
                     weights if weights is not None else recurrent_weights)
        self._set_heads(num_heads)
        self.seed = seed
        stream = self.backend.random(seed, stream=0)
        H, I, NH, DH = self.num_units, self.input_size, self.num_heads, self.head_size
        self.weights = (self._initial_weights(stream) if weights is None else
                        self.parameter("weights", weights, (4 * H, 1 + I), "[4H, 1 + I]: bias, input weights"))
        self.recurrent_weights = (
            stream.uniform((NH, 4 * DH, DH), -1.0 / math.sqrt(H), 1.0 / math.sqrt(H), self.dtype)
            if recurrent_weights is None else
            self.parameter("recurrent_weights", recurrent_weights, (NH, 4 * DH, DH), "[num_heads, 4·DH, DH]"))

    def _initial_weights(self, stream: Any) -> Any:
        """Bias 0 except the forget gate's, spread over 3..6 in each head (σ ≈ 0.95..0.998: a long memory);
        input weights glorot-uniform over [4H, I]."""
        xp, H, I, DH = self.backend.xp, self.num_units, self.input_size, self.head_size
        device = self.backend.device
        spread = xp.linspace(3.0, 6.0, DH, dtype=self.dtype, device=device)  # [3.0] when DH = 1
        zeros = xp.zeros((H,), dtype=self.dtype, device=device)
        bias = xp.concat([zeros, xp.concat([spread] * self.num_heads), zeros, zeros])
        limit = math.sqrt(6.0 / (I + 4 * H))
        return xp.concat([bias[:, None], stream.uniform((4 * H, I), -limit, limit, self.dtype)], axis=1)

    def state_shapes(self, batch_size: int | None) -> SLSTMState:
        shape = self.num_units if batch_size is None else (batch_size, self.num_units)
        return SLSTMState(shape, shape, shape, shape)

    def parameters(self) -> dict[str, Any]:
        return {"weights": self.weights, "recurrent_weights": self.recurrent_weights}

    def config(self) -> dict[str, Any]:
        return {"num_units": self.num_units, "input_size": self.input_size, "num_heads": self.num_heads,
                "seed": self.seed}

    def unroll(self, x: Any, state: SLSTMState, valid: Any, with_backward: bool) -> Unrolling:
        """Run x [T, B, I] from `state`; see `RecurrentCell.unroll`."""
        kernels = self.backend.library.slstm_kernels()
        if kernels is not None:  # the backend's fused time loop: the same numbers, far fewer calls
            return self._fused_unroll(kernels, x, state, valid, with_backward)
        xp = namespace_of(x=x, weights=self.weights)
        steps, batch, H = x.shape[0], x.shape[1], self.num_units
        # The input projection of all steps at once: one [T·B, I] × [I, 4H] matmul, plus the bias.
        x_projected = xp.reshape(
            xp.reshape(x, (steps * batch, self.input_size)) @ xp.matrix_transpose(self.weights[:, 1:]),
            (steps, batch, 4 * H)) + self.weights[:, 0]
        recurrent_t = xp.matrix_transpose(block_diagonal(self.recurrent_weights))  # [H, 4H]
        outputs, preactivations, states = [], [], []
        for t in range(steps):
            valid_t = None if valid is None else valid[t, ...]  # [B, 1]
            a = x_projected[t, ...] + state.h @ recurrent_t  # [B, 4H]
            k = slstm_step_internals(a, state)
            if with_backward:
                preactivations.append(a)
                states.append(state)
            state = carry(valid_t, SLSTMState(k.c, k.n, k.m, k.h), state)
            outputs.append(k.h if valid_t is None else xp.where(valid_t, k.h, xp.zeros_like(k.h)))
        stacked = xp.stack(outputs, axis=0) if steps else xp.zeros((0, batch, H), dtype=self.dtype,
                                                                    device=device_of(x))
        if not with_backward:
            return Unrolling(stacked, state, None)
        from xlstm.slstm_grad import slstm_backward  # the backward pass imports this module

        def backward(d_outputs: Any = None, d_final_state: SLSTMState | None = None) -> dict[str, Any]:
            return slstm_backward(self, x, preactivations, states, valid, d_outputs, d_final_state)

        return Unrolling(stacked, state, backward)

    def _fused_unroll(self, kernels: Any, x: Any, state: SLSTMState, valid: Any, with_backward: bool) -> Unrolling:
        """`unroll` by the backend's `slstm_kernels()`: its forward loop now, its backward loop when asked."""
        outputs, final, cache = kernels.slstm_forward(x, self.weights, self.recurrent_weights, tuple(state), valid,
                                                      with_backward)
        if not with_backward:
            return Unrolling(outputs, SLSTMState(*final), None)

        def backward(d_outputs: Any = None, d_final_state: SLSTMState | None = None) -> dict[str, Any]:
            d_weights, d_recurrent, d_inputs, d_initial = kernels.slstm_backward(cache, d_outputs, d_final_state)
            return {"weights": d_weights, "recurrent_weights": d_recurrent, "inputs": d_inputs,
                    "initial_state": SLSTMState(*d_initial)}

        return Unrolling(outputs, SLSTMState(*final), backward)
