"""The mLSTM's parallel form: a whole window at once (quadratic in T, stabilised), and its hand-written VJP.

Unrolling the recurrence of `mlstm_recurrent` (per head, k scaled, F_t = Σ_{r≤t} log σ(f̃_r)):

    log D_ts = F_t − F_s + ĩ_s  (s ≤ t, else −∞)   how much step s still weighs at step t
    g_t      = m_0 + F_t                             how much the initial state still weighs
    m_t      = max(g_t, max_s log D_ts)              (without g_t when the initial state is fresh)
    S_ts     = (q_tᵀ k_s) exp(log D_ts − m_t)
    h̃_t      = (Σ_s S_ts v_s + w_t q_tᵀ C_0) / (max(|Σ_s S_ts + w_t q_tᵀ n_0|, exp(−m_t)) + eps),
               w_t = exp(g_t − m_t) (0 when fresh)
    C_T      = w_T C_0 + Σ_s exp(log D_Ts − m_T) k_s v_sᵀ,  n_T likewise with k_s,  m_T as above.

This is the recurrence's m_t exactly (a padded step is ĩ = −∞, log σ(f̃) = 0: it carries the state), so both
forms compute the same numbers; with a zero initial state it is NX-AI's `parallel_stabilized_simple`.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from xlstm.checks import device_of, namespace_of
from xlstm.functional import sigmoid
from xlstm.mlstm_recurrent import Backward, MLSTMState, floor_share, fresh_rows, log_sigmoid


def parallel_form(q: Any, k: Any, v: Any, i_pre: Any, f_pre: Any, state: MLSTMState, valid: Any, eps: float,
                  with_backward: bool) -> tuple[Any, MLSTMState, Backward | None]:
    """`recurrent_form`'s computation (same arguments, same results, T ≥ 1) as T×T matrix products per head."""
    xp = namespace_of(q=q, k=k, v=v, i_pre=i_pre, f_pre=f_pre, C=state.C)
    steps, scale = q.shape[0], 1.0 / math.sqrt(q.shape[-1])
    heads_first = lambda a: xp.permute_dims(a, (1, 2, 0, 3))  # noqa: E731  [T, B, NH, DH] → [B, NH, T, DH]
    q, k, v = heads_first(q), heads_first(k) * scale, heads_first(v)
    i_pre, f_pre = xp.permute_dims(i_pre, (1, 2, 0)), xp.permute_dims(f_pre, (1, 2, 0))  # [B, NH, T]
    log_f = log_sigmoid(f_pre)
    inside = None if valid is None else xp.permute_dims(valid, (1, 2, 0))  # [B, 1, T]
    i_in = i_pre if inside is None else xp.where(inside, i_pre, -math.inf)
    log_f = log_f if inside is None else xp.where(inside, log_f, 0.0)
    F = xp.cumulative_sum(log_f, axis=-1)
    index = xp.arange(steps, device=device_of(q))
    causal = index[:, None] >= index[None, :]
    log_D = xp.where(causal, F[..., :, None] - F[..., None, :] + i_in[..., None, :], -math.inf)  # [B, NH, T, T]
    row_max = xp.max(log_D, axis=-1)
    fresh = fresh_rows(state.n)[..., None]  # [B, NH, 1]
    g = state.m[..., None] + F
    use_g = xp.logical_and(xp.logical_not(fresh), g >= row_max)
    m = xp.where(use_g, g, row_max)
    empty = m == -math.inf  # a fresh head with no valid step yet: nothing to stabilise
    m = xp.where(empty, 0.0, m)
    D = xp.exp(log_D - m[..., None])
    w = xp.where(fresh, 0.0, xp.exp(xp.where(fresh, 0.0, g - m)))
    P = q @ xp.matrix_transpose(k)
    S = P * D
    qC = q @ state.C  # q_tᵀ C_0   [B, NH, T, DH]
    qn = xp.sum(q * state.n[..., None, :], axis=-1)
    numerator = S @ v + w[..., None] * qC
    dot = xp.sum(S, axis=-1) + w * qn
    floor = xp.exp(-m)
    normaliser = xp.maximum(xp.abs(dot), floor) + eps
    h = numerator / normaliser[..., None]
    if inside is not None:
        h = xp.where(inside[..., None], h, 0.0)
    kept = empty[..., -1]  # heads with no valid step: their final state is the initial one
    w_T, D_T = w[..., -1], D[..., -1, :]
    closed = MLSTMState(w_T[..., None, None] * state.C + xp.matrix_transpose(k) @ (D_T[..., None] * v),
                        w_T[..., None] * state.n + xp.sum(D_T[..., None] * k, axis=-2), m[..., -1])
    final = MLSTMState(xp.where(kept[..., None, None], state.C, closed.C),
                       xp.where(kept[..., None], state.n, closed.n), xp.where(kept, state.m, closed.m))
    h_time_major = xp.permute_dims(h, (2, 0, 1, 3))
    if not with_backward:
        return h_time_major, final, None

    def backward(d_h: Any, d_final: Any) -> dict[str, Any]:
        """Each line of the forward, differentiated in reverse order (the max through its chosen branch)."""
        d_h = xp.zeros_like(h) if d_h is None else xp.permute_dims(d_h, (1, 2, 0, 3))
        if inside is not None:
            d_h = xp.where(inside[..., None], d_h, 0.0)
        d_num = d_h / normaliser[..., None]
        dh_h = xp.sum(d_h * h, axis=-1)
        by_dot = xp.abs(dot) >= floor
        d_dot = xp.where(by_dot, -dh_h / normaliser * xp.sign(dot), 0.0)
        d_m = xp.where(by_dot, 0.0, dh_h * floor_share(m, eps))
        d_S = d_num @ xp.matrix_transpose(v) + d_dot[..., None]
        d_v = xp.matrix_transpose(S) @ d_num
        d_w = xp.sum(d_num * qC, axis=-1) + d_dot * qn
        weighted_num, weighted_dot = w[..., None] * d_num, w * d_dot
        d_q = weighted_num @ xp.matrix_transpose(state.C) + weighted_dot[..., None] * state.n[..., None, :]
        d_C0 = xp.matrix_transpose(q) @ weighted_num
        d_n0 = xp.sum(weighted_dot[..., None] * q, axis=-2)
        d_D = d_S * P
        d_P = d_S * D
        d_q = d_q + d_P @ k
        d_k = xp.matrix_transpose(d_P) @ q
        d_m0 = xp.zeros_like(state.m)
        if d_final is not None:
            dC_T, dn_T, dm_T = (xp.where(kept[(...,) + (None,) * extra], 0.0, part)
                                for part, extra in zip(d_final, (2, 1, 0)))
            last = xp.astype(index == steps - 1, q.dtype)  # [T] one-hot of the last step
            d_w = d_w + last * (xp.sum(dC_T * state.C, axis=(-2, -1)) + xp.sum(dn_T * state.n, axis=-1))[..., None]
            d_C0 = d_C0 + w_T[..., None, None] * dC_T
            d_n0 = d_n0 + w_T[..., None] * dn_T
            k_dC = k @ dC_T  # k_sᵀ dC_T   [B, NH, T, DH]
            d_D_T = xp.sum(k_dC * v, axis=-1) + xp.sum(k * dn_T[..., None, :], axis=-1)
            d_D = d_D + last[:, None] * d_D_T[..., None, :]
            d_k = d_k + D_T[..., None] * (v @ xp.matrix_transpose(dC_T) + dn_T[..., None, :])
            d_v = d_v + D_T[..., None] * k_dC
            d_m = d_m + last * dm_T[..., None]
        d_log_D = d_D * D
        d_g = d_w * w
        d_m = xp.where(empty, 0.0, d_m - xp.sum(d_log_D, axis=-1) - d_g)
        d_g = d_g + xp.where(use_g, d_m, 0.0)
        chosen = index == xp.argmax(log_D, axis=-1)[..., None]  # the row max's argument
        d_log_D = d_log_D + xp.where(chosen, xp.where(use_g, 0.0, d_m)[..., None], 0.0)
        d_i = xp.sum(d_log_D, axis=-2)
        d_F = xp.sum(d_log_D, axis=-1) - d_i + d_g
        d_m0 = d_m0 + xp.sum(d_g, axis=-1)
        d_log_f = xp.flip(xp.cumulative_sum(xp.flip(d_F, axis=-1), axis=-1), axis=-1)
        d_f = d_log_f * sigmoid(-f_pre)
        if inside is not None:
            d_i, d_f = xp.where(inside, d_i, 0.0), xp.where(inside, d_f, 0.0)
        d_initial = MLSTMState(d_C0, d_n0, d_m0)
        if d_final is not None:
            d_initial = MLSTMState(*(d + xp.where(kept[(...,) + (None,) * extra], part, 0.0)
                                     for d, part, extra in zip(d_initial, d_final, (2, 1, 0))))
        time_major = lambda a: xp.permute_dims(a, (2, 0, 1, 3))  # noqa: E731
        return {"q": time_major(d_q), "k": time_major(d_k) * scale, "v": time_major(d_v),
                "i": xp.permute_dims(d_i, (2, 0, 1)), "f": xp.permute_dims(d_f, (2, 0, 1)),
                "initial_state": d_initial}

    return h_time_major, final, backward


def chunkwise_form(q: Any, k: Any, v: Any, i_pre: Any, f_pre: Any, state: MLSTMState, valid: Any, eps: float,
                   with_backward: bool, chunk_size: int,
                   parallel: Callable[..., tuple] = parallel_form) -> tuple[Any, MLSTMState, Backward | None]:
    """The parallel form (`parallel`: this module's or a backend's fused one) over consecutive chunks of at most
    `chunk_size` steps, each starting from the state the previous one ended in: the same numbers, in time and
    memory linear in T (T ≥ 1)."""
    xp = namespace_of(q=q, C=state.C)
    runs, outputs = [], []
    for start in range(0, q.shape[0], chunk_size):
        window = slice(start, min(start + chunk_size, q.shape[0]))  # the standard refuses stops past the end
        h, state, backward = parallel(q[window, ...], k[window, ...], v[window, ...], i_pre[window, ...],
                                      f_pre[window, ...], state, None if valid is None else valid[window, ...],
                                      eps, with_backward)
        runs.append((window, backward))
        outputs.append(h)
    h = xp.concat(outputs, axis=0)
    if not with_backward:
        return h, state, None

    def backward(d_h: Any, d_final: Any) -> dict[str, Any]:
        """The chunks' VJPs from the last to the first, each handing its initial state's gradient back."""
        pieces = []
        for window, chunk_backward in reversed(runs):
            grads = chunk_backward(None if d_h is None else d_h[window, ...], d_final)
            d_final = grads.pop("initial_state")
            pieces.append(grads)
        pieces.reverse()
        return {**{name: xp.concat([g[name] for g in pieces], axis=0) for name in pieces[0]},
                "initial_state": d_final}

    return h, state, backward
