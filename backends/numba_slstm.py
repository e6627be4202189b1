"""Compiled CPU kernels for the sLSTM cell's time loop (the optional `fast` extra: numba).

The generic code (xlstm/slstm.py, xlstm/slstm_grad.py) pays per step for about twenty NumPy calls on
[B, H] arrays and for one [B, H]·[H, 4H] product against the block-diagonal recurrent matrix, of which
(NH − 1)/NH are zeros. Here each direction of the whole sequence is one compiled call per row block,
and per step it does:

- the recurrent term head by head: NH products h_{t-1,k} [b, DH] · R_kᵀ [DH, 4·DH] by numba_kernels'
  `_product` (its weights packed once per call), nothing spent on the zero blocks;
- one pass over each batch row for the step's pointwise work (stabiliser, gates, c, n, h), the same
  lines as `slstm_step_internals`, in the same order;
- backwards, one pass for the pointwise gradient (the lines of `slstm_step_vjp`) and NH products
  d_a_k [b, 4·DH] · R_k [4·DH, DH] for d h_{t-1}.

The input projection [T·B, I]·W_xᵀ and, after the backward loop, the weight and input gradients are
whole-sequence products by OpenBLAS; the recurrent weights' gradient is one product per head over every
step, d_a_kᵀ · h_{t-1,k}, never the dense [4H, H]. Batch rows never meet, so the batch is cut into row
blocks, each running the whole loop on a thread of its own (`row_threads`), as for the LSTM.

float64 uses math's exp, log1p and tanh: its numbers equal the generic code's to rounding. float32 takes
tanh from numba_kernels (Eigen's rational approximation, a few units in the last place).
Layout: pre-activations [T, B, 4H] in gates i, f, z, o, each block of H units listing the heads in order.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy

from xlstm_backends.numba_kernels import JIT, _blas_threads, _product, _row_blocks, packed_columns, tanh
from xlstm_backends.row_threads import run_on_row_blocks

DESCRIPTION = f"compiled kernels (numba {numba.__version__}), per-head recurrent products"


class ForwardCache(NamedTuple):
    """What the backward pass needs from `slstm_forward`."""

    inputs: numpy.ndarray  # x [T, B, I]
    weights: numpy.ndarray  # [4H, 1 + I]
    recurrent_weights: numpy.ndarray  # R [NH, 4·DH, DH]
    preactivations: numpy.ndarray  # a [T, B, 4H] of every step
    states: numpy.ndarray  # [4, T, B, H]: c, n, m, h entering every step
    valid: numpy.ndarray  # [T, B] booleans, or [0, B] without lengths
    blocks: list[tuple[int, int]]  # [start, stop) of every row block


@numba.njit(**JIT)
def _sigmoid(x, one):
    """1 / (1 + e^-x) from e^-|x|, as xlstm.functional.sigmoid computes it."""
    e = math.exp(-abs(x))
    return one / (one + e) if x >= 0 else e / (one + e)


@numba.njit(**JIT)
def _stabilised_gates(i_raw, f_raw, m_prev, n_prev, one):
    """One unit's log σ(f̃) + m_{t-1}, first-step flag (n_{t-1} = 0), m_t, i' and f', as `slstm_step_internals`
    computes them: the lines both passes share."""
    zero = one - one
    log_f_plus_m = min(f_raw, zero) - math.log1p(math.exp(-abs(f_raw))) + m_prev
    first = n_prev == zero
    m = i_raw if first else max(log_f_plus_m, i_raw)
    return log_f_plus_m, first, m, min(math.exp(i_raw - m), one), min(math.exp(log_f_plus_m - m), one)


@numba.njit(**JIT)
def _heads_product(h, packed, rest, h_heads, out):
    """out[k] = h[:, head k] · w_k for every head k: h [b, NH·DH] copied head by head into h_heads [NH, b, DH],
    w_k given as `packed_columns` (packed[k], rest[k]), out [NH, b, N]."""
    heads, rows, head_size = h_heads.shape
    for k in range(heads):
        for r in range(rows):
            h_heads[k, r] = h[r, k * head_size:(k + 1) * head_size]
        _product(h_heads[k], packed[k], rest[k], out[k])


@numba.njit(**JIT)
def _forward_loop(preactivations, packed, rest, c, n, m, h, valid, outputs, states, keep, one, start, stop):
    """Run every step in place for the batch rows [start, stop). preactivations [T, B, 4H] holds the input
    projection (bias included) and receives the recurrent term; packed, rest: each head's R_kᵀ [DH, 4·DH] by
    `packed_columns`; c, n, m, h [B, H] the state, updated; valid [T, B] or [0, B]; outputs [T, B, H]; with
    `keep`, states [4, T, B, H] receives c, n, m, h entering each step."""
    steps, _, four_units = preactivations.shape
    units = four_units // 4
    heads = packed.shape[0]
    head_size = units // heads
    zero = one - one
    recurrent = numpy.empty((heads, stop - start, 4 * head_size), preactivations.dtype)  # [NH, b, 4·DH]
    h_heads = numpy.empty((heads, stop - start, head_size), preactivations.dtype)
    for t in range(steps):
        if keep:
            states[0, t, start:stop] = c[start:stop]
            states[1, t, start:stop] = n[start:stop]
            states[2, t, start:stop] = m[start:stop]
            states[3, t, start:stop] = h[start:stop]
        _heads_product(h[start:stop], packed, rest, h_heads, recurrent)
        for b in range(start, stop):
            a, out = preactivations[t, b], outputs[t, b]
            for k in range(heads):  # a += R h_{t-1}: head k's product, gates i, f, z, o × its units
                for g in range(4):
                    for d in range(head_size):
                        a[g * units + k * head_size + d] += recurrent[k, b - start, g * head_size + d]
            if valid.shape[0] > 0 and not valid[t, b]:  # past its length: the row keeps its state, outputs zero
                out[:] = zero
                continue
            cb, nb, mb, hb = c[b], n[b], m[b], h[b]
            for j in range(units):
                _, _, m_new, i, f = _stabilised_gates(a[j], a[units + j], mb[j], nb[j], one)
                c_new = f * cb[j] + i * tanh(a[2 * units + j])
                n_new = f * nb[j] + i
                cb[j], nb[j], mb[j] = c_new, n_new, m_new
                hb[j] = _sigmoid(a[3 * units + j], one) * c_new / n_new
                out[j] = hb[j]


@numba.njit(**JIT)
def _backward_loop(preactivations, states, valid, packed, rest, d_outputs, d_c, d_n, d_m, d_h, d_a, one, start,
                   stop):
    """Walk the steps backwards in place for the batch rows [start, stop): d_c, d_n, d_m, d_h [B, H] become the
    initial state's gradients and d_a [T, B, 4H] every step's pre-activation gradients. preactivations, states,
    valid as `_forward_loop` kept them; d_outputs [T, B, H]; packed, rest: each head's R_k [4·DH, DH] by
    `packed_columns`. Each step recomputes its forward values from a and the entering state, then undoes them
    line by line as `slstm_step_vjp` does (see xlstm/slstm_grad.py for the stabiliser's and clamps' rules)."""
    steps, _, four_units = preactivations.shape
    units = four_units // 4
    heads = packed.shape[0]
    head_size = units // heads
    zero = one - one
    d_heads = numpy.empty((heads, stop - start, 4 * head_size), d_a.dtype)  # [NH, b, 4·DH]: d_a head by head
    d_h_prev = numpy.empty((heads, stop - start, head_size), d_a.dtype)
    for t in range(steps - 1, -1, -1):
        for b in range(start, stop):
            d = d_a[t, b]
            d[:] = zero
            if valid.shape[0] == 0 or valid[t, b]:  # a padded step passes the state's gradient straight through
                _step_gradient(preactivations[t, b], states[0, t, b], states[1, t, b], states[2, t, b], d_c[b],
                               d_n[b], d_m[b], d_h[b], d_outputs[t, b], d, one)
            for k in range(heads):
                for g in range(4):
                    for j in range(head_size):
                        d_heads[k, b - start, g * head_size + j] = d[g * units + k * head_size + j]
        for k in range(heads):  # d h_{t-1} = d_a · R, head by head
            _product(d_heads[k], packed[k], rest[k], d_h_prev[k])
        for b in range(start, stop):
            if valid.shape[0] == 0 or valid[t, b]:
                for k in range(heads):
                    d_h[b, k * head_size:(k + 1) * head_size] = d_h_prev[k, b - start]


@numba.njit(**JIT)
def _step_gradient(a, c_prev, n_prev, m_prev, dcb, dnb, dmb, dhb, d_out, d, one):
    """One batch row's backward step: d [4H] the pre-activation gradients from a [4H], the entering state c_prev,
    n_prev, m_prev [H] and the new state's gradients dcb, dnb, dmb, dhb [H] (+ d_out [H] on h); dcb, dnb, dmb
    become the entering state's. The forward's values are recomputed first, then undone line by line."""
    units = c_prev.shape[0]
    zero = one - one
    for j in range(units):
        i_raw, f_raw, z_raw, o_raw = a[j], a[units + j], a[2 * units + j], a[3 * units + j]
        # the forward step again
        log_f_plus_m, first, m, i, f = _stabilised_gates(i_raw, f_raw, m_prev[j], n_prev[j], one)
        z, o = tanh(z_raw), _sigmoid(o_raw, one)
        c = f * c_prev[j] + i * z
        n = f * n_prev[j] + i
        h = o * c / n
        # h = o · c / n
        dh = dhb[j] + d_out[j]
        d_o = dh * c / n
        dc = dcb[j] + dh * o / n
        dn = dnb[j] - dh * h / n
        # n = f' n_{t-1} + i'   and   c = f' c_{t-1} + i' z
        d_f = dc * c_prev[j] + dn * n_prev[j]
        d_i = dc * z + dn
        d_z = dc * i
        # the clamped exponentials: e^u below the clamp, 0 above it
        d_u_i = d_i * i if i_raw - m <= zero else zero
        d_u_f = d_f * f if log_f_plus_m - m <= zero else zero
        d_m_new = dmb[j] - d_u_i - d_u_f
        # m = ĩ (first step) or max(log σ(f̃) + m_{t-1}, ĩ)
        m_is_i = first or i_raw >= log_f_plus_m
        d_log_f_plus_m = d_u_f + (zero if m_is_i else d_m_new)
        d[j] = d_u_i + (d_m_new if m_is_i else zero)
        d[units + j] = d_log_f_plus_m * _sigmoid(-f_raw, one)
        d[2 * units + j] = d_z * (one - z * z)
        d[3 * units + j] = d_o * o * (one - o)
        dcb[j], dnb[j], dmb[j] = dc * f, dn * f, d_log_f_plus_m


def _packed_heads(blocks: list[numpy.ndarray]) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Each head's matrix [K, N] by `packed_columns`, stacked over the heads: (chunks [NH, ...], rest [NH, ...])."""
    packed = [packed_columns(block) for block in blocks]
    return numpy.stack([p.chunks for p in packed]), numpy.stack([p.rest for p in packed])


def slstm_forward(inputs, weights, recurrent_weights, state, valid=None, keep_for_backward=False):
    """Unroll the sLSTM over time-major inputs [T, B, I] from state (c, n, m, h), each [B, H]; weights
    [4H, 1 + I], recurrent_weights [NH, 4·DH, DH], valid [T, B, 1] booleans or None.

    Returns (outputs [T, B, H], final state (c, n, m, h), cache for `slstm_backward` or None)."""
    dtype = weights.dtype
    inputs = numpy.ascontiguousarray(inputs, dtype)
    steps, batch, input_size = inputs.shape
    units = weights.shape[0] // 4
    preactivations = (inputs.reshape(steps * batch, input_size) @ weights[:, 1:].T + weights[:, 0]).reshape(
        steps, batch, 4 * units)
    packed, rest = _packed_heads([block.T for block in recurrent_weights])  # R_kᵀ [DH, 4·DH]
    c, n, m, h = (numpy.array(part, dtype, order="C") for part in state)  # copies: updated in place
    valid = numpy.empty((0, batch), numpy.bool_) if valid is None else numpy.ascontiguousarray(valid[:, :, 0])
    states = numpy.empty((4, steps if keep_for_backward else 0, batch, units), dtype)
    outputs = numpy.empty((steps, batch, units), dtype)
    blocks = _row_blocks(batch, units)
    one = dtype.type(1.0)

    def block(start: int, stop: int) -> None:
        _forward_loop(preactivations, packed, rest, c, n, m, h, valid, outputs, states, keep_for_backward, one,
                      start, stop)

    with _blas_threads(blocks, units):
        run_on_row_blocks(block, blocks)
    cache = (ForwardCache(inputs, weights, recurrent_weights, preactivations, states, valid, blocks)
             if keep_for_backward else None)
    return outputs, (c, n, m, h), cache


def slstm_backward(cache: ForwardCache, d_outputs=None, d_final_state=None):
    """Backpropagate through the loop of `slstm_forward` from d_outputs [T, B, H] and the final state's gradient
    (d_c, d_n, d_m, d_h) (either None for zeros).

    Returns (d_weights [4H, 1 + I], d_recurrent_weights [NH, 4·DH, DH], d_inputs [T, B, I],
    initial state's gradient (d_c, d_n, d_m, d_h))."""
    inputs, weights, recurrent_weights = cache.inputs, cache.weights, cache.recurrent_weights
    steps, batch, input_size = inputs.shape
    heads, four_head_size, head_size = recurrent_weights.shape
    units = weights.shape[0] // 4
    dtype = weights.dtype
    d_outputs = (numpy.zeros((steps, batch, units), dtype) if d_outputs is None
                 else numpy.ascontiguousarray(d_outputs, dtype))
    d_state = ((numpy.zeros((batch, units), dtype) for _ in range(4)) if d_final_state is None
               else (numpy.array(part, dtype, order="C") for part in d_final_state))  # copies: updated in place
    d_c, d_n, d_m, d_h = d_state
    packed, rest = _packed_heads(list(recurrent_weights))  # R_k [4·DH, DH]
    d_a = numpy.empty((steps, batch, 4 * units), dtype)
    one = dtype.type(1.0)

    def block(start: int, stop: int) -> None:
        _backward_loop(cache.preactivations, cache.states, cache.valid, packed, rest, d_outputs, d_c, d_n, d_m, d_h,
                       d_a, one, start, stop)

    with _blas_threads(cache.blocks, units):
        run_on_row_blocks(block, cache.blocks)
    rows = steps * batch
    flat_d_a = d_a.reshape(rows, 4 * units)
    d_weights = numpy.empty(weights.shape, dtype)
    d_weights[:, 0] = flat_d_a.sum(axis=0)
    d_weights[:, 1:] = flat_d_a.T @ inputs.reshape(rows, input_size)
    d_inputs = (flat_d_a @ weights[:, 1:]).reshape(steps, batch, input_size)
    # R_k's gradient: Σ over steps and rows of d_a_kᵀ h_{t-1,k}, one product per head
    d_a_heads = d_a.reshape(rows, 4, heads, head_size)
    h_heads = cache.states[3].reshape(rows, heads, head_size)
    d_recurrent = numpy.empty(recurrent_weights.shape, dtype)
    for k in range(heads):
        d_recurrent[k] = d_a_heads[:, :, k, :].reshape(rows, four_head_size).T @ h_heads[:, k, :]
    return d_weights, d_recurrent, d_inputs, (d_c, d_n, d_m, d_h)
