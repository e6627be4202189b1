"""Compiled CPU kernels for the sLSTM cell's time loop (the optional `fast` extra: numba).

The generic code (xlstm/slstm.py, xlstm/slstm_grad.py) pays per step for about twenty NumPy calls on
[B, H] arrays and for one [B, H]·[H, 4H] product against the block-diagonal recurrent matrix, of which
(NH − 1)/NH are zeros. Here each direction of the whole sequence is one compiled call per row block,
and per step it does:

- the recurrent term head by head: NH products h_{t-1,k} [b, DH] · R_kᵀ [DH, 4·DH] by numba_kernels'
  `_product` (its weights packed once per call), nothing spent on the zero blocks;
- one pass over each batch row for the step's pointwise work (stabiliser, gates, c, n, h), the lines of
  `slstm_step_internals` written without branches (selects), so that the compiler runs the units in vectors;
- backwards, one such pass for the pointwise gradient (the lines of `slstm_step_vjp`) and NH products
  d_a_k [b, 4·DH] · R_k [4·DH, DH] for d h_{t-1}.

Inside, a row's state is one [4, H] array (c, n, m, h): few distinct arrays per loop, which the compiler
must check for overlap before it vectorises.

The input projection [T·B, I]·W_xᵀ and, after the backward loop, the weight and input gradients are
whole-sequence products by OpenBLAS; the recurrent weights' gradient is one product per head over every
step, d_a_kᵀ · h_{t-1,k}, never the dense [4H, H]. Batch rows never meet, so the batch is cut into row
blocks, each running the whole loop on a thread of its own (`row_threads`), as for the LSTM.

float64 uses math's exp, log1p and tanh: its numbers equal the generic code's to rounding. float32 uses
`exp` and `log1p_of_unit` below (polynomials, about one unit in the last place) and tanh from numba_kernels
(Eigen's rational approximation, a few units in the last place): libm's scalar expf, five calls per unit,
had made the compiled step as slow as the generic code's (~18 ms forward at the default layer's shape).
Layout: pre-activations [T, B, 4H] in gates i, f, z, o, each block of H units listing the heads in order.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, overload

from xlstm_backends.numba_kernels import (JIT, TILE_VECTORS, VECTOR_BITS, _blas_threads, _product, _row_blocks, empty,
                                          packed_columns, tanh)
from xlstm_backends.row_threads import run_on_row_blocks

DESCRIPTION = f"compiled kernels (numba {numba.__version__}), per-head recurrent products"


# float32 e^x as Cephes' expf: x = n·ln 2 + r with |r| ≤ ½ ln 2, e^r by a polynomial, 2^n built from its bits
# (about 1 unit in the last place, and no call: libm's expf per unit was most of the step's time).
EXP_LIMITS = (-87.33654, 88.72283)  # e^x of float32 is normal in between
LN2_HIGH, LN2_LOW, LOG2_E = 0.693359375, -2.12194440e-4, 1.44269504088896341
EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the int32 `bits`."""
    if bits != types.int32:
        return None
    return types.float32(types.int32), lambda context, builder, signature, args: builder.bitcast(args[0],
                                                                                               ir.FloatType())


def exp(x):  # noqa: D103 - replaced inside compiled code by the overload below
    return math.exp(x)


@overload(exp, inline="always", jit_options={"fastmath": JIT["fastmath"]})
def _exp_for(x):
    """float32: the polynomial above (e^x below EXP_LIMITS[0] comes out as the smallest normal, ~1e-38, not 0);
    float64 and others: math.exp."""
    if isinstance(x, types.Float) and x.bitwidth == 32:
        low, high = (numpy.float32(limit) for limit in EXP_LIMITS)
        ln2_high, ln2_low, log2_e, half, one = (numpy.float32(c) for c in (LN2_HIGH, LN2_LOW, LOG2_E, 0.5, 1.0))
        p0, p1, p2, p3, p4, p5 = (numpy.float32(c) for c in EXP_P)

        def polynomial(x):
            x = min(max(x, low), high)
            n = numpy.floor(x * log2_e + half)
            r = x - n * ln2_high - n * ln2_low
            p = (((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5) * r * r + r + one
            return p * _float32_from_bits(numpy.int32((numpy.int32(n) + numpy.int32(127)) << numpy.int32(23)))

        return polynomial
    return lambda x: math.exp(x)


def log1p_of_unit(e):  # noqa: D103 - replaced inside compiled code by the overload below
    return math.log1p(e)


@overload(log1p_of_unit, inline="always", jit_options={"fastmath": JIT["fastmath"]})
def _log1p_of_unit_for(e):
    """log(1 + e) for 0 ≤ e ≤ 1 (log σ's e^-|x|). float32: 2·atanh(s) with s = e / (2 + e) ≤ ⅓, its series to
    s¹⁵ (the next term is below 1e-9); float64 and others: math.log1p."""
    if isinstance(e, types.Float) and e.bitwidth == 32:
        two = numpy.float32(2.0)
        c = tuple(numpy.float32(1.0 / k) for k in (1, 3, 5, 7, 9, 11, 13, 15))

        def series(e):
            s = e / (two + e)
            s2 = s * s
            return two * s * (((((((c[7] * s2 + c[6]) * s2 + c[5]) * s2 + c[4]) * s2 + c[3]) * s2 + c[2]) * s2
                               + c[1]) * s2 + c[0])

        return series
    return lambda e: math.log1p(e)


class ForwardCache(NamedTuple):
    """What the backward pass needs from `slstm_forward`."""

    inputs: numpy.ndarray  # x [T, B, I]
    weights: numpy.ndarray  # [4H, 1 + I]
    recurrent_weights: numpy.ndarray  # R [NH, 4·DH, DH]
    preactivations: numpy.ndarray  # a [T, B, 4H] of every step
    states: numpy.ndarray  # [T, B, 4, H]: the state entering every step (its c, n, m are read; h rides along)
    h_by_head: list  # each row block's h_{t-1} head by head, [NH, T, b, DH]
    valid: numpy.ndarray  # [T, B] booleans, or [0, B] without lengths
    blocks: list[tuple[int, int]]  # [start, stop) of every row block


@numba.njit(inline="always", **JIT)  # inlined: the callers' loops vectorise
def _stabilised_gates(i_raw, f_raw, m_prev, n_prev, one):
    """One unit's log σ(f̃) + m_{t-1}, whether m_t = ĩ, m_t, i' and f', as `slstm_step_internals` computes them:
    the lines both passes share. One exponential: the gate whose exponent is the maximum is e^0 = 1 (or clamped
    to 1 under the first-step rule), the other is e^-|log σ(f̃) + m_{t-1} − ĩ|. Written without branches (selects
    only), so that the compiler runs a row's units in vectors."""
    zero = one - one
    log_f_plus_m = min(f_raw, zero) - log1p_of_unit(exp(-abs(f_raw))) + m_prev
    m_is_i = n_prev == zero or i_raw >= log_f_plus_m  # the first-step rule, or ĩ the maximum
    e = exp(-abs(log_f_plus_m - i_raw))
    i = one if m_is_i else e
    f = e if i_raw >= log_f_plus_m else one
    return log_f_plus_m, m_is_i, i_raw if m_is_i else log_f_plus_m, i, f


@numba.njit(inline="always", **JIT)  # inlined: the callers' loops vectorise
def _sigmoid(x, one):
    """1 / (1 + e^-x) from e^-|x|, as xlstm.functional.sigmoid computes it."""
    e = exp(-abs(x))
    return (one if x >= one - one else e) / (one + e)


@numba.njit(**JIT)
def _step(a, state, one):
    """One batch row's forward step in place: state [4, H] rows c, n, m, h from the pre-activations a [4H]."""
    units = state.shape[1]
    for j in range(units):
        _, _, m, i, f = _stabilised_gates(a[j], a[units + j], state[2, j], state[1, j], one)
        c = f * state[0, j] + i * tanh(a[2 * units + j])
        n = f * state[1, j] + i
        state[0, j], state[1, j], state[2, j] = c, n, m
        state[3, j] = _sigmoid(a[3 * units + j], one) * c / n


@numba.njit(**JIT)
def _step_gradient(a, state, d_state, d, one):
    """One batch row's backward step: d [4H] the pre-activation gradients from a [4H], the entering state [4, H]
    (c, n, m, h) and the new state's gradient d_state [4, H] (h's including the output's); d_state becomes the entering
    state's (but h's: h_{t-1} reaches the step only through a). The forward values are recomputed first, then
    undone line by line as `slstm_step_vjp` does (see xlstm/slstm_grad.py for the stabiliser's and clamps' rules:
    the clamps pass no gradient exactly where the exponent of a gate is above 0, here where the gate is 1 without
    being e^0 of the maximum, i.e. f' under the first-step rule with log σ(f̃) + m_{t-1} > ĩ)."""
    units = state.shape[1]
    zero = one - one
    for j in range(units):
        i_raw, f_raw, z_raw, o_raw = a[j], a[units + j], a[2 * units + j], a[3 * units + j]
        c_prev, n_prev = state[0, j], state[1, j]
        log_f_plus_m, m_is_i, m, i, f = _stabilised_gates(i_raw, f_raw, state[2, j], n_prev, one)
        z, o = tanh(z_raw), _sigmoid(o_raw, one)
        c = f * c_prev + i * z
        n = f * n_prev + i
        h = o * c / n
        # h = o · c / n
        dh = d_state[3, j]
        d_o = dh * c / n
        dc = d_state[0, j] + dh * o / n
        dn = d_state[1, j] - dh * h / n
        # n = f' n_{t-1} + i'   and   c = f' c_{t-1} + i' z
        d_f = dc * c_prev + dn * n_prev
        d_i = dc * z + dn
        d_z = dc * i
        # the clamped exponentials: e^u below the clamp, 0 above it (u_i = ĩ − m ≤ 0 always)
        d_u_i = d_i * i
        d_u_f = d_f * f if log_f_plus_m <= m else zero
        d_m = d_state[2, j] - d_u_i - d_u_f
        # m = ĩ (first step) or max(log σ(f̃) + m_{t-1}, ĩ)
        d_log_f_plus_m = d_u_f + (zero if m_is_i else d_m)
        d[j] = d_u_i + (d_m if m_is_i else zero)
        d[units + j] = d_log_f_plus_m * _sigmoid(-f_raw, one)
        d[2 * units + j] = d_z * (one - z * z)
        d[3 * units + j] = d_o * o * (one - o)
        d_state[0, j], d_state[1, j], d_state[2, j] = dc * f, dn * f, d_log_f_plus_m


@numba.njit(**JIT)
def _heads_product(rows, gates, packed, rest, by_head, out):
    """out[k] = (rows' columns of head k) · w_k for every head k. rows [b, G·NH·D] in G blocks (gates) that each
    list the heads in order; head k's columns of every block are gathered into by_head [NH, b, G·D]; w_k given as
    `packed_columns` (packed[k], rest[k]), padded by `_packed_heads`; out [NH, b, N'] (N' ≥ N, the padded width)."""
    heads, count, width = by_head.shape
    size = width // gates
    units = heads * size
    for k in range(heads):
        for r in range(count):
            for g in range(gates):  # index loops: numba's slice copies cost ~100 ns each in call overhead
                for j in range(size):
                    by_head[k, r, g * size + j] = rows[r, g * units + k * size + j]
        _product(by_head[k], packed[k], rest[k], out[k])


@numba.njit(**JIT)
def _forward_loop(preactivations, packed, rest, state, valid, outputs, states, h_by_head, keep, one, start, stop):
    """Run every step in place for the batch rows [start, stop). preactivations [T, B, 4H] holds the input
    projection (bias included) and receives the recurrent term; packed, rest: each head's R_kᵀ [DH, 4·DH] by
    `packed_columns`; state [B, 4, H] rows c, n, m, h, updated; valid [T, B] or [0, B]; outputs [T, B, H]; with
    `keep`, states [T, B, 4, H] receives the state entering each step, and the block's h_by_head [NH, T, b, DH]
    each step's h_{t-1} head by head (the rows of the recurrent weights' gradient); without, it has one step."""
    steps, _, four_units = preactivations.shape
    units = four_units // 4
    heads = packed.shape[0]
    head_size = units // heads
    zero = one - one
    width = packed.shape[1] * packed.shape[3]  # 4·DH, padded to whole chunks (`_packed_heads`)
    recurrent = numpy.empty((heads, stop - start, width), preactivations.dtype)  # [NH, b, 4·DH]
    for t in range(steps):
        if keep:
            states[t, start:stop] = state[start:stop]
        _heads_product(state[start:stop, 3], 1, packed, rest, h_by_head[:, t if keep else 0], recurrent)
        for b in range(start, stop):
            a, out = preactivations[t, b], outputs[t, b]
            for k in range(heads):  # a += R h_{t-1}: head k's product, gates i, f, z, o × its units
                for g in range(4):
                    for d in range(head_size):
                        a[g * units + k * head_size + d] += recurrent[k, b - start, g * head_size + d]
            if valid.shape[0] > 0 and not valid[t, b]:  # past its length: the row keeps its state, outputs zero
                out[:] = zero
            else:
                _step(a, state[b], one)
                out[:] = state[b, 3]


@numba.njit(**JIT)
def _backward_loop(preactivations, states, valid, packed, rest, d_outputs, d_state, d_a, d_by_head, one, start,
                   stop):
    """Walk the steps backwards in place for the batch rows [start, stop): d_state [B, 4, H] (c, n, m, h) becomes
    the initial state's gradient and d_a [T, B, 4H] every step's pre-activation gradients. preactivations,
    states, valid as `_forward_loop` kept them; d_outputs [T, B, H]; packed, rest: each head's R_k [4·DH, DH] by
    `packed_columns`; the block's d_by_head [NH, T, b, 4·DH] receives d_a head by head."""
    steps, _, four_units = preactivations.shape
    units = four_units // 4
    heads = packed.shape[0]
    head_size = units // heads
    zero = one - one
    d_h_prev = numpy.empty((heads, stop - start, packed.shape[1] * packed.shape[3]), d_a.dtype)  # DH, padded
    for t in range(steps - 1, -1, -1):
        for b in range(start, stop):
            if valid.shape[0] > 0 and not valid[t, b]:  # a padded step passes the state's gradient straight through
                d_a[t, b] = zero
            else:
                d_state[b, 3] += d_outputs[t, b]  # h_t's gradient: from later steps and from the output
                _step_gradient(preactivations[t, b], states[t, b], d_state[b], d_a[t, b], one)
        _heads_product(d_a[t, start:stop], 4, packed, rest, d_by_head[:, t], d_h_prev)  # d h_{t-1} = d_a · R
        for b in range(start, stop):
            if valid.shape[0] == 0 or valid[t, b]:
                for k in range(heads):
                    for j in range(head_size):
                        d_state[b, 3, k * head_size + j] = d_h_prev[k, b - start, j]


def _packed_heads(blocks) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Each head's matrix [K, N] of blocks [NH, K, N] by `packed_columns`, stacked over the heads: (chunks
    [NH, N' / C, K, C], rest [NH, K, 0]). The columns are padded with zeros to N', whole chunks of C: `_product`'s
    plain loop over leftover columns took four fifths of the backward product's time at DH = 48 (AVX-512: C = 32)."""
    heads, depth, width = blocks.shape
    columns = TILE_VECTORS * VECTOR_BITS // (8 * blocks.itemsize)
    padded = numpy.zeros((heads, depth, -(-width // columns) * columns), blocks.dtype)
    padded[:, :, :width] = blocks
    packed = [packed_columns(block) for block in padded]
    return numpy.stack([p.chunks for p in packed]), numpy.stack([p.rest for p in packed])


def slstm_forward(inputs, weights, recurrent_weights, state, valid=None, keep_for_backward=False):
    """Unroll the sLSTM over time-major inputs [T, B, I] from state (c, n, m, h), each [B, H]; weights
    [4H, 1 + I], recurrent_weights [NH, 4·DH, DH], valid [T, B, 1] booleans or None.

    Returns (outputs [T, B, H], final state (c, n, m, h), cache for `slstm_backward` or None)."""
    dtype = weights.dtype
    inputs = numpy.ascontiguousarray(inputs, dtype)
    steps, batch, input_size = inputs.shape
    units = weights.shape[0] // 4
    heads, head_size = recurrent_weights.shape[0], recurrent_weights.shape[2]
    # Big buffers from the workspace (fresh pages fault: a new 6 MB array for this projection cost 5 ms, the
    # product itself 0.5 ms, at the default layer's shape).
    preactivations = empty((steps, batch, 4 * units), dtype)
    numpy.matmul(inputs.reshape(steps * batch, input_size), weights[:, 1:].T,
                 out=preactivations.reshape(steps * batch, 4 * units))
    preactivations += weights[:, 0]
    packed, rest = _packed_heads(recurrent_weights.transpose(0, 2, 1))  # R_kᵀ [DH, 4·DH]
    state = numpy.ascontiguousarray(numpy.stack(state, axis=1), dtype)  # [B, 4, H]: c, n, m, h, updated in place
    valid = numpy.empty((0, batch), numpy.bool_) if valid is None else numpy.ascontiguousarray(valid[:, :, 0])
    states = empty((steps if keep_for_backward else 0, batch, 4, units), dtype)
    outputs = empty((steps, batch, units), dtype)
    blocks = _row_blocks(batch, units)
    h_by_head = [empty((heads, steps if keep_for_backward else 1, stop - start, head_size), dtype)
                 for start, stop in blocks]
    one = dtype.type(1.0)

    def block(start: int, stop: int) -> None:
        _forward_loop(preactivations, packed, rest, state, valid, outputs, states,
                      h_by_head[blocks.index((start, stop))], keep_for_backward, one, start, stop)

    with _blas_threads(blocks, units):
        run_on_row_blocks(block, blocks)
    cache = (ForwardCache(inputs, weights, recurrent_weights, preactivations, states, h_by_head, valid, blocks)
             if keep_for_backward else None)
    return outputs, tuple(state[:, k].copy() for k in range(4)), cache


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
    if d_outputs is None:
        d_outputs = empty((steps, batch, units), dtype)
        d_outputs[...] = 0
    d_outputs = numpy.ascontiguousarray(d_outputs, dtype)
    d_state = (numpy.zeros((batch, 4, units), dtype) if d_final_state is None  # [B, 4, H], updated in place
               else numpy.ascontiguousarray(numpy.stack(d_final_state, axis=1), dtype))
    packed, rest = _packed_heads(recurrent_weights)  # R_k [4·DH, DH]
    d_a = empty((steps, batch, 4 * units), dtype)
    d_by_head = [empty((heads, steps, stop - start, four_head_size), dtype) for start, stop in cache.blocks]
    one = dtype.type(1.0)

    def block(start: int, stop: int) -> None:
        _backward_loop(cache.preactivations, cache.states, cache.valid, packed, rest, d_outputs, d_state, d_a,
                       d_by_head[cache.blocks.index((start, stop))], one, start, stop)

    with _blas_threads(cache.blocks, units):
        run_on_row_blocks(block, cache.blocks)
    rows = steps * batch
    flat_d_a = d_a.reshape(rows, 4 * units)
    d_weights = numpy.empty(weights.shape, dtype)
    d_weights[:, 0] = flat_d_a.sum(axis=0)
    d_weights[:, 1:] = flat_d_a.T @ inputs.reshape(rows, input_size)
    d_inputs = empty((steps, batch, input_size), dtype)
    numpy.matmul(flat_d_a, weights[:, 1:], out=d_inputs.reshape(rows, input_size))
    # R_k's gradient: Σ over steps and rows of d_a_kᵀ h_{t-1,k}, one product per head and row block
    d_recurrent = numpy.zeros(recurrent_weights.shape, dtype)
    for d_heads, h_heads in zip(d_by_head, cache.h_by_head):
        for k in range(heads):
            d_recurrent[k] += d_heads[k].reshape(-1, four_head_size).T @ h_heads[k].reshape(-1, head_size)
    return d_weights, d_recurrent, d_inputs, tuple(d_state[:, k].copy() for k in range(4))
