"""The mLSTM's parallel form in NumPy, fused: the same numbers as xlstm/mlstm_parallel.py (float64 within
1e-12, tests/test_mlstm.py), with fewer and cheaper passes over the T×T matrices.

What differs from the generic code, and why it is faster on NumPy:
- The row maximum max_s log D_ts = F_t + max_{s≤t} (ĩ_s − F_s) is a running maximum over T values
  (`np.maximum.accumulate`) instead of a reduction over T×T, and its argument is the running maximum's
  index; the VJP adds the row maximum's gradient with one `bincount` instead of a T×T one-hot.
- log D − m is one broadcast sum (F_t − m_t) + (ĩ_s − F_s); the entries above the diagonal are clipped to 0
  before exp (keeping it finite) and zeroed by one multiplication with the causal mask, instead of a
  `where` with −∞.
- Products and sums are done in place where the operands are dead afterwards.
The state type is the one given (xlstm's MLSTMState): backends never import xlstm.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy

DESCRIPTION = "NumPy: the mLSTM's parallel form with a running row maximum (backends/numpy_mlstm.py)"


def _log_sigmoid(x: numpy.ndarray) -> numpy.ndarray:
    return numpy.minimum(x, 0.0) - numpy.log1p(numpy.exp(-numpy.abs(x)))


def _sigmoid(x: numpy.ndarray) -> numpy.ndarray:
    """σ(x) from e^−|x|, never overflowing (as xlstm.functional.sigmoid)."""
    e = numpy.exp(-numpy.abs(x))
    return numpy.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def parallel_form(q: Any, k: Any, v: Any, i_pre: Any, f_pre: Any, state: Any, valid: Any, eps: float,
                  with_backward: bool) -> tuple[Any, Any, Callable[..., dict[str, Any]] | None]:
    """xlstm.mlstm_parallel.parallel_form on NumPy arrays (same arguments and results, T ≥ 1)."""
    steps, scale = q.shape[0], 1.0 / math.sqrt(q.shape[-1])
    dtype = q.dtype
    q = numpy.ascontiguousarray(q.transpose(1, 2, 0, 3))  # [B, NH, T, DH]
    k = numpy.ascontiguousarray(k.transpose(1, 2, 0, 3)) * scale
    v = numpy.ascontiguousarray(v.transpose(1, 2, 0, 3))
    i_pre, f_pre = i_pre.transpose(1, 2, 0), f_pre.transpose(1, 2, 0)  # [B, NH, T]
    C0, n0, m0 = state
    log_f = _log_sigmoid(f_pre)
    inside = None if valid is None else valid.transpose(1, 2, 0)  # [B, 1, T]
    i_in = i_pre if inside is None else numpy.where(inside, i_pre, -numpy.inf)
    if inside is not None:
        log_f = numpy.where(inside, log_f, 0.0)
    F = numpy.cumsum(log_f, axis=-1)
    a = i_in - F  # log weight of step s seen from the window's start
    running = numpy.maximum.accumulate(a, axis=-1)
    row_max = F + running
    fresh = numpy.all(n0 == 0.0, axis=-1)[..., None]
    g = m0[..., None] + F
    use_g = ~fresh & (g >= row_max)
    m = numpy.where(use_g, g, row_max)
    empty = m == -numpy.inf
    m[empty] = 0.0
    w = numpy.where(fresh, 0.0, numpy.exp(numpy.where(fresh, 0.0, g - m))).astype(dtype, copy=False)
    causal = numpy.tril(numpy.ones((steps, steps), dtype=dtype))
    D = (F - m)[..., :, None] + a[..., None, :]
    numpy.minimum(D, 0.0, out=D)  # the causal entries are ≤ 0 already; this keeps exp finite above the diagonal
    numpy.exp(D, out=D)
    D *= causal
    P = q @ k.swapaxes(-1, -2)
    S = P * D
    qC = q @ C0
    qn = numpy.einsum("bhtd,bhd->bht", q, n0)
    numerator = S @ v
    numerator += w[..., None] * qC
    dot = S.sum(axis=-1)
    dot += w * qn
    floor = numpy.exp(-m)
    normaliser = numpy.maximum(numpy.abs(dot), floor)
    normaliser += eps
    h = numerator / normaliser[..., None]
    if inside is not None:
        h *= inside[..., None]
    kept = empty[..., -1]
    w_T, D_T = w[..., -1], D[..., -1, :]
    final = type(state)(numpy.where(kept[..., None, None], C0, w_T[..., None, None] * C0
                                    + k.swapaxes(-1, -2) @ (D_T[..., None] * v)),
                        numpy.where(kept[..., None], n0, w_T[..., None] * n0 + numpy.einsum("bhs,bhsd->bhd", D_T, k)),
                        numpy.where(kept, m0, m[..., -1]))
    h_time_major = h.transpose(2, 0, 1, 3)
    if not with_backward:
        return h_time_major, final, None

    def backward(d_h: Any, d_final: Any) -> dict[str, Any]:
        """The generic backward's steps, the row maximum through the running maximum's index."""
        d_h = numpy.zeros_like(h) if d_h is None else d_h.transpose(1, 2, 0, 3)
        if inside is not None:
            d_h = d_h * inside[..., None]
        d_num = d_h / normaliser[..., None]
        dh_h = numpy.einsum("bhtd,bhtd->bht", d_h, h)
        by_dot = numpy.abs(dot) >= floor
        d_dot = numpy.where(by_dot, -dh_h / normaliser * numpy.sign(dot), 0.0)
        d_m = numpy.where(by_dot, 0.0, dh_h * _sigmoid(-m - math.log(eps)))  # exp(−m) / (exp(−m) + eps)
        d_S = d_num @ v.swapaxes(-1, -2)
        d_S += d_dot[..., None]
        d_v = S.swapaxes(-1, -2) @ d_num
        d_w = numpy.einsum("bhtd,bhtd->bht", d_num, qC) + d_dot * qn
        weighted_num, weighted_dot = w[..., None] * d_num, w * d_dot
        d_q = weighted_num @ C0.swapaxes(-1, -2) + weighted_dot[..., None] * n0[..., None, :]
        d_C0 = q.swapaxes(-1, -2) @ weighted_num
        d_n0 = numpy.einsum("bht,bhtd->bhd", weighted_dot, q)
        d_D = d_S * P
        d_S *= D  # now d_P
        d_q += d_S @ k
        d_k = d_S.swapaxes(-1, -2) @ q
        if d_final is not None:
            dC_T, dn_T, dm_T = (numpy.where(kept[(...,) + (None,) * extra], 0.0, part)
                                for part, extra in zip(d_final, (2, 1, 0)))
            d_w[..., -1] += numpy.einsum("bhij,bhij->bh", dC_T, C0) + numpy.einsum("bhi,bhi->bh", dn_T, n0)
            d_C0 += w_T[..., None, None] * dC_T
            d_n0 += w_T[..., None] * dn_T
            k_dC = k @ dC_T
            d_D[..., -1, :] += numpy.einsum("bhsd,bhsd->bhs", k_dC, v) + numpy.einsum("bhsd,bhd->bhs", k, dn_T)
            d_k += D_T[..., None] * (v @ dC_T.swapaxes(-1, -2) + dn_T[..., None, :])
            d_v += D_T[..., None] * k_dC
            d_m[..., -1] += dm_T
        d_D *= D  # now d log D
        rows, columns = d_D.sum(axis=-1), d_D.sum(axis=-2)
        d_g = d_w * w
        d_m = numpy.where(empty, 0.0, d_m - rows - d_g)
        d_g += numpy.where(use_g, d_m, 0.0)
        d_row = numpy.where(use_g, 0.0, d_m)  # the row maximum F_t + (ĩ − F)_{s*}: to F_t, ĩ_{s*} and −F_{s*}
        index = numpy.arange(steps)
        chosen = numpy.maximum.accumulate(numpy.where(a == running, index, 0), axis=-1)
        flat = (numpy.arange(chosen.size // steps).reshape(chosen.shape[:-1] + (1,)) * steps + chosen).ravel()
        to_chosen = numpy.bincount(flat, weights=d_row.ravel(), minlength=chosen.size).reshape(chosen.shape).astype(dtype)
        d_i = columns + to_chosen
        d_F = rows - d_i + d_g + d_row
        d_m0 = d_g.sum(axis=-1)
        d_log_f = numpy.flip(numpy.cumsum(numpy.flip(d_F, axis=-1), axis=-1), axis=-1)
        d_f = d_log_f * _sigmoid(-f_pre)
        if inside is not None:
            d_i, d_f = d_i * inside, d_f * inside
        d_initial = [d_C0, d_n0, d_m0]
        if d_final is not None:
            d_initial = [d + numpy.where(kept[(...,) + (None,) * extra], part, 0.0)
                         for d, part, extra in zip(d_initial, d_final, (2, 1, 0))]
        time_major = lambda x: x.transpose(2, 0, 1, 3)  # noqa: E731
        return {"q": time_major(d_q), "k": time_major(d_k) * scale, "v": time_major(d_v),
                "i": d_i.transpose(2, 0, 1), "f": d_f.transpose(2, 0, 1), "initial_state": type(state)(*d_initial)}

    return h_time_major, final, backward
