"""The mLSTM's recurrent form: one step at a time over each head's matrix memory, and its hand-written VJP.

Per head (all arrays [B, NH, ...]; k already scaled by 1/√DH):

    m_t  = ĩ_t                          if the state is fresh (n_{t-1} = 0: an empty memory)
         = max(log σ(f̃_t) + m_{t-1}, ĩ_t)   otherwise                       stabiliser
    i'   = exp(ĩ_t − m_t)    f' = exp(log σ(f̃_t) + m_{t-1} − m_t)  (0 when fresh)
    C_t  = f' C_{t-1} + i' k vᵀ          [DH, DH], row index of k (the reference's layout)
    n_t  = f' n_{t-1} + i' k             [DH]
    h̃_t  = (qᵀ C_t) / (max(|qᵀ n_t|, exp(−m_t)) + eps)
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

from xlstm.checks import namespace_of
from xlstm.functional import sigmoid
from xlstm.recurrent_cell import carry, split_gradient


class MLSTMState(NamedTuple):
    """The mLSTM's state per head: matrix memory C [B, NH, DH, DH] (C[..., i, j] sums k_i v_j), normaliser
    n [B, NH, DH] and stabiliser m [B, NH] (the log scale that C and n are stored divided by)."""

    C: Any
    n: Any
    m: Any


Backward = Callable[[Any, Any], dict[str, Any]]


def log_sigmoid(x: Any) -> Any:
    """log σ(x) without overflow: min(x, 0) − log(1 + exp(−|x|))."""
    xp = namespace_of(x=x)
    return xp.minimum(x, 0.0) - xp.log1p(xp.exp(-xp.abs(x)))


def floor_share(m: Any, eps: float) -> Any:
    """exp(−m) / (exp(−m) + eps) = σ(−m − log eps): the floor's part of a floored normaliser, the factor its
    gradient carries; finite where exp(−m) overflows (a memory whose every input gate was tiny)."""
    return sigmoid(-m - math.log(eps))


def fresh_rows(n: Any) -> Any:
    """[B, NH] booleans: heads whose normaliser is all zero, i.e. whose memory is empty (a zero state)."""
    xp = namespace_of(n=n)
    return xp.all(n == 0.0, axis=-1)


class _Step(NamedTuple):
    """What one step keeps for its backward pass."""

    q: Any
    k: Any  # scaled
    v: Any
    f_pre: Any
    previous: MLSTMState
    use_forget: Any  # [B, NH]: m_t came from log σ(f̃) + m_{t-1} (else from ĩ)
    fresh: Any
    i_act: Any
    f_act: Any
    state: MLSTMState
    normaliser: Any  # max(|qᵀn|, exp(−m)) + eps  [B, NH]
    dot: Any  # qᵀ n_t
    h: Any


def _step(q: Any, k: Any, v: Any, i_pre: Any, f_pre: Any, previous: MLSTMState, eps: float) -> _Step:
    """One step of the recurrence (k already scaled)."""
    xp = namespace_of(q=q, C=previous.C)
    candidate = log_sigmoid(f_pre) + previous.m
    fresh = fresh_rows(previous.n)
    use_forget = xp.logical_and(xp.logical_not(fresh), candidate >= i_pre)
    m = xp.where(use_forget, candidate, i_pre)
    i_act = xp.exp(i_pre - m)
    f_act = xp.where(fresh, 0.0, xp.exp(xp.where(fresh, 0.0, candidate - m)))
    C = f_act[..., None, None] * previous.C + i_act[..., None, None] * (k[..., :, None] * v[..., None, :])
    n = f_act[..., None] * previous.n + i_act[..., None] * k
    dot = xp.sum(q * n, axis=-1)
    normaliser = xp.maximum(xp.abs(dot), xp.exp(-m)) + eps
    h = (q[..., None, :] @ C)[..., 0, :] / normaliser[..., None]
    return _Step(q, k, v, f_pre, previous, use_forget, fresh, i_act, f_act, MLSTMState(C, n, m), normaliser, dot, h)


def _step_backward(s: _Step, dh: Any, d_state: MLSTMState, eps: float) -> tuple[dict[str, Any], MLSTMState]:
    """The step's VJP: (gradients of q, k (scaled), v, ĩ, f̃; the gradient of the previous state)."""
    xp = namespace_of(dh=dh, C=s.state.C)
    C, n, m = s.state
    d_num = dh / s.normaliser[..., None]
    dh_h = xp.sum(dh * s.h, axis=-1)
    by_dot = xp.abs(s.dot) >= xp.exp(-m)
    d_dot = xp.where(by_dot, -dh_h / s.normaliser * xp.sign(s.dot), 0.0)
    d_m = d_state.m + xp.where(by_dot, 0.0, dh_h * floor_share(m, eps))  # d/dm of exp(−m) / normaliser
    d_C = d_state.C + s.q[..., :, None] * d_num[..., None, :]
    d_n = d_state.n + d_dot[..., None] * s.q
    d_q = (C @ d_num[..., :, None])[..., 0] + d_dot[..., None] * n
    dC_v = (d_C @ s.v[..., :, None])[..., 0]  # dC · v   [B, NH, DH]
    d_f_act = xp.sum(d_C * s.previous.C, axis=(-2, -1)) + xp.sum(d_n * s.previous.n, axis=-1)
    d_i_act = xp.sum(dC_v * s.k, axis=-1) + xp.sum(d_n * s.k, axis=-1)
    d_k = s.i_act[..., None] * (dC_v + d_n)
    d_v = s.i_act[..., None] * (s.k[..., None, :] @ d_C)[..., 0, :]
    d_i_pre = d_i_act * s.i_act
    d_candidate = d_f_act * s.f_act
    d_m = d_m - d_i_pre - d_candidate
    d_candidate = d_candidate + xp.where(s.use_forget, d_m, 0.0)
    d_i_pre = d_i_pre + xp.where(s.use_forget, 0.0, d_m)
    grads = {"q": d_q, "k": d_k, "v": d_v, "i": d_i_pre, "f": d_candidate * sigmoid(-s.f_pre)}
    previous = MLSTMState(s.f_act[..., None, None] * d_C, s.f_act[..., None] * d_n, d_candidate)
    return grads, previous


def recurrent_form(q: Any, k: Any, v: Any, i_pre: Any, f_pre: Any, state: MLSTMState, valid: Any, eps: float,
                   with_backward: bool) -> tuple[Any, MLSTMState, Backward | None]:
    """The mLSTM over q, k, v [T, B, NH, DH] and gate pre-activations ĩ, f̃ [T, B, NH] from `state`, one step
    at a time; k is scaled by 1/√DH here. `valid` [T, B, 1] (or None) marks each row's steps: outside them
    h̃ is zero and the state is carried. Returns (h̃ [T, B, NH, DH], final state, backward or None);
    backward(dh̃, d_final_state) gives {"q", "k", "v", "i", "f"} (shaped as the inputs) and "initial_state"."""
    xp = namespace_of(q=q, k=k, v=v, i_pre=i_pre, f_pre=f_pre, C=state.C)
    scale = 1.0 / math.sqrt(q.shape[-1])
    k = k * scale
    steps, outputs = [], []
    for t in range(q.shape[0]):
        s = _step(q[t, ...], k[t, ...], v[t, ...], i_pre[t, ...], f_pre[t, ...], state, eps)
        steps.append(s)
        state = carry(None if valid is None else valid[t, ...], s.state, state)
        outputs.append(s.h if valid is None else xp.where(valid[t, ..., None], s.h, 0.0))
    h = xp.stack(outputs, axis=0) if outputs else xp.zeros_like(q)
    if not with_backward:
        return h, state, None
    final = state

    def backward(d_h: Any, d_final: Any) -> dict[str, Any]:
        """Walk the steps backwards (a padded step passes the state's gradient on untouched)."""
        d_state = MLSTMState(*(xp.zeros_like(part) for part in final)) if d_final is None else MLSTMState(*d_final)
        d_h = xp.zeros_like(h) if d_h is None else d_h
        per_step = []
        for t in reversed(range(len(steps))):
            valid_t = None if valid is None else valid[t, ...]
            inside, skipped = split_gradient(valid_t, d_state)
            d_h_t = d_h[t, ...] if valid_t is None else xp.where(valid_t[..., None], d_h[t, ...], 0.0)
            grads, d_state = _step_backward(steps[t], d_h_t, inside, eps)
            if skipped is not None:
                d_state = MLSTMState(*(a + b for a, b in zip(d_state, skipped)))
            per_step.append(grads)
        per_step.reverse()
        stacked = {name: xp.stack([g[name] for g in per_step], axis=0) if per_step else
                   xp.zeros_like(i_pre if name in ("i", "f") else q) for name in ("q", "k", "v", "i", "f")}
        stacked["k"] = stacked["k"] * scale
        return {**stacked, "initial_state": d_state}

    return h, state, backward
