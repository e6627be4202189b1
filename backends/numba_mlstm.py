"""The mLSTM's parallel form compiled (the optional `fast` extra: numba): the same numbers as
xlstm/mlstm_parallel.py (float64 within 1e-12, tests/test_numba_mlstm.py), one compiled call per direction.

NumPy's fused form (numpy_mlstm.py) spends most of its time in passes over [B, NH, T, T] arrays, each
a trip through memory and the interpreter. Here each (batch row, head) pair is one unit of work: its
q, k, v are gathered from the projection's [T, B, NH, DH] views into small contiguous blocks, the decay
matrix D, the scores P = Q·Kᵀ, S = P⊙D, the normaliser and h̃ are made in one pass per row while the
T×T block is in cache, and the products are single-threaded BLAS calls on those blocks (numba's
np.dot). Pairs never meet, so they are cut into blocks that run on the row threads (`row_threads`,
XLSTM_THREADS). `chunkwise_form` runs the chunks of a window inside the same call, the state carried in
the pair's own buffers; `parallel_form` is one chunk of the whole window. `unroll` is the whole cell
(`MLSTMCell.unroll`, form="auto"): per block of batch rows its projection, its pairs and its output gate.

Per step the stabiliser's bookkeeping (F, m, w, the normaliser) is done in float64, whatever the
dtype; the T×T blocks and the products are in the arrays' dtype. The row maximum is a running maximum
as in numpy_mlstm.py (its argument the first index reaching it, as argmax picks), and log D − m is
(F_t − m_t) + (ĩ_s − F_s), clipped at 0 before exp. The state type is the one given: backends never
import xlstm.
"""
from __future__ import annotations

import functools
import math
import operator
from typing import Any, Callable

import numba
import numpy

from xlstm_backends.numba_kernels import BLAS, JIT
from xlstm_backends.row_threads import row_blocks, run_on_row_blocks

DESCRIPTION = f"compiled mLSTM parallel form, per (batch row, head) (numba {numba.__version__})"
MIN_ROWS = 4  # batch rows a thread must get to be worth starting (unroll)
MIN_PAIRS = 4  # (batch row, head) pairs a thread must get to be worth starting
# Per-step values kept for the backward pass, rows of `steps` [pairs, STEP_ROWS, T] (float64).
M, W, NORMALISER, DOT, USE_G, EMPTY, CHOSEN = range(7)
STEP_ROWS = 7


@numba.njit(**JIT)
def _gather(source, start, b, head, out, factor):
    """out[t, :DH] = factor · source[start + t, b, head, :] (a pair's block out of a [T, B, NH, DH] view)."""
    for t in range(out.shape[0]):
        for d in range(source.shape[3]):
            out[t, d] = source[start + t, b, head, d] * factor


@numba.njit(**JIT)
def _scatter(block, start, b, head, target, factor):
    """target[start + t, b, head, :] = factor · block[t, :DH] (`_gather` the other way)."""
    for t in range(block.shape[0]):
        for d in range(target.shape[3]):
            target[start + t, b, head, d] = block[t, d] * factor


@numba.njit(**JIT)
def _forward_pairs(first, last, q, k, v, i_pre, f_pre, valid, has_valid, C_in, n_in, m_in, eps, scale, chunk,
                   h_out, C_out, n_out, m_out, keep, steps, blocks, squares, starts, m_starts):
    """The forward of pairs first … last − 1 (pair = b·NH + head) over every chunk; with `keep`, what the
    backward needs: per step `steps`, D and P per chunk in `blocks` [pair, 2, T, chunk], h̃ and q·[C_0 | n_0] in
    `squares` [pair, 2, T, DH + 1], each chunk's initial state in `starts` ([C | n]) and `m_starts`."""
    T, heads, DH = q.shape[0], q.shape[2], q.shape[3]
    dtype = q.dtype
    zero = numpy.zeros(1, dtype)[0]
    for pair in range(first, last):
        b, head = pair // heads, pair % heads
        Cn = numpy.empty((DH, DH + 1), dtype)  # [C | n]: one product q·[C | n] gives q·C and q·n
        Cn[:, :DH] = C_in[b, head]
        Cn[:, DH] = n_in[b, head]
        m0 = numpy.float64(m_in[b, head])
        for start in range(0, T, chunk):
            L = min(chunk, T - start)
            if keep:
                starts[pair, start // chunk] = Cn
                m_starts[pair, start // chunk] = m0
            Q = numpy.empty((L, DH), dtype)
            K = numpy.empty((L, DH), dtype)
            V1 = numpy.ones((L, DH + 1), dtype)  # [V | 1]: one product S·[V | 1] gives S·V and Σ_s S_ts
            _gather(q, start, b, head, Q, 1.0)
            _gather(k, start, b, head, K, scale)
            _gather(v, start, b, head, V1, 1.0)
            shift = numpy.empty(L, dtype)  # F_t − m_t
            a = numpy.empty(L, dtype)  # ĩ_s − F_s: step s's log weight seen from the chunk's start
            m = numpy.empty(L)
            w = numpy.empty(L)
            use_g = numpy.zeros(L, numpy.bool_)
            empty = numpy.zeros(L, numpy.bool_)
            chosen = numpy.zeros(L, numpy.int64)
            fresh = True
            for d in range(DH):
                if Cn[d, DH] != 0.0:
                    fresh = False
            total, running, best = 0.0, -math.inf, 0
            for t in range(L):
                inside = valid[start + t, b] if has_valid else True
                f = numpy.float64(f_pre[start + t, b, head])
                total += (min(f, 0.0) - math.log1p(math.exp(-abs(f)))) if inside else 0.0
                a_t = (numpy.float64(i_pre[start + t, b, head]) if inside else -math.inf) - total
                a[t] = a_t
                if t == 0 or a_t > running:
                    running, best = a_t, t
                chosen[t] = best
                row_max = total + running
                g = m0 + total
                use_g[t] = (not fresh) and g >= row_max
                m_t = g if use_g[t] else row_max
                empty[t] = m_t == -math.inf
                m_t = 0.0 if empty[t] else m_t
                m[t] = m_t
                shift[t] = total - m_t
                w[t] = 0.0 if fresh else math.exp(g - m_t)
            D = numpy.zeros((L, L), dtype)
            for t in range(L):
                for s in range(t + 1):
                    D[t, s] = math.exp(min(shift[t] + a[s], zero))
            P = numpy.dot(Q, K.T)
            S = P * D
            SV = numpy.dot(S, V1)
            QC = numpy.zeros((L, DH + 1), dtype) if fresh else numpy.dot(Q, Cn)
            H = numpy.empty((L, DH), dtype)
            for t in range(L):
                dot = SV[t, DH] + w[t] * QC[t, DH]
                normaliser = max(abs(dot), math.exp(-m[t])) + eps
                inside = valid[start + t, b] if has_valid else True
                for d in range(DH):
                    H[t, d] = (SV[t, d] + w[t] * QC[t, d]) / normaliser if inside else 0.0
                if keep:
                    steps[pair, NORMALISER, start + t] = normaliser
                    steps[pair, DOT, start + t] = dot
            _scatter(H, start, b, head, h_out, 1.0)
            if keep:
                squares[pair, 0, start:start + L, :DH] = H
                squares[pair, 1, start:start + L] = QC
                for t in range(L):
                    steps[pair, M, start + t] = m[t]
                    steps[pair, W, start + t] = w[t]
                    steps[pair, USE_G, start + t] = use_g[t]
                    steps[pair, EMPTY, start + t] = empty[t]
                    steps[pair, CHOSEN, start + t] = chosen[t]
                blocks[pair, 0, start:start + L, :L] = D
                blocks[pair, 1, start:start + L, :L] = P
            if not empty[L - 1]:  # else no valid step yet from a fresh state: the state is kept
                w_T = w[L - 1]
                added = numpy.dot(K.T, V1 * D[L - 1][:, None])  # Σ_s D_Ts k_s [v_s | 1]
                for i in range(DH):
                    for j in range(DH + 1):
                        Cn[i, j] = w_T * Cn[i, j] + added[i, j]
                m0 = m[L - 1]
        C_out[b, head] = Cn[:, :DH]
        n_out[b, head] = Cn[:, DH]
        m_out[b, head] = m0


@numba.njit(**JIT)
def _backward_pairs(first, last, q, k, v, f_pre, valid, has_valid, eps, scale, chunk, steps, blocks, squares,
                    starts, m_starts, d_h, dC_final, dn_final, dm_final, has_final,
                    d_q, d_k, d_v, d_i, d_f, dC_out, dn_out, dm_out):
    """The backward of pairs first … last − 1, chunks from the last to the first, each handing its initial
    state's gradient to the chunk before (the generic backward's steps, [C | n] and [V | 1] as forwards)."""
    T, heads, DH = q.shape[0], q.shape[2], q.shape[3]
    dtype = q.dtype
    log_eps = math.log(eps)
    for pair in range(first, last):
        b, head = pair // heads, pair % heads
        dCn = numpy.empty((DH, DH + 1), dtype)
        dCn[:, :DH] = dC_final[b, head]
        dCn[:, DH] = dn_final[b, head]
        dm = numpy.float64(dm_final[b, head])
        last_start = ((T - 1) // chunk) * chunk
        for start in range(last_start, -1, -chunk):
            L = min(chunk, T - start)
            Cn0 = starts[pair, start // chunk]
            Q = numpy.empty((L, DH), dtype)
            K = numpy.empty((L, DH), dtype)
            V1 = numpy.ones((L, DH + 1), dtype)
            _gather(q, start, b, head, Q, 1.0)
            _gather(k, start, b, head, K, scale)
            _gather(v, start, b, head, V1, 1.0)
            D = numpy.ascontiguousarray(blocks[pair, 0, start:start + L, :L])
            P = numpy.ascontiguousarray(blocks[pair, 1, start:start + L, :L])
            S = P * D
            fresh = True
            for d in range(DH):
                if Cn0[d, DH] != 0.0:
                    fresh = False
            d_ext = numpy.empty((L, DH + 1), dtype)  # [d numerator | d dot]
            d_m = numpy.empty(L)
            d_w = numpy.empty(L)
            inside = numpy.ones(L, numpy.bool_)
            G = numpy.empty((L, DH), dtype)
            _gather(d_h, start, b, head, G, 1.0)
            for t in range(L):
                inside[t] = valid[start + t, b] if has_valid else True
                normaliser = steps[pair, NORMALISER, start + t]
                dh_h = 0.0
                for d in range(DH):
                    g_h = G[t, d] if inside[t] else 0.0
                    dh_h += g_h * squares[pair, 0, start + t, d]
                    d_ext[t, d] = g_h / normaliser
                dot, m_t = steps[pair, DOT, start + t], steps[pair, M, start + t]
                if abs(dot) >= math.exp(-m_t):
                    d_ext[t, DH] = -dh_h / normaliser * (1.0 if dot > 0 else (-1.0 if dot < 0 else 0.0))
                    d_m[t] = 0.0
                else:
                    d_ext[t, DH] = 0.0
                    d_m[t] = dh_h / (1.0 + math.exp(m_t + log_eps))  # σ(−m − log eps): the floor's share
                d_w_t = 0.0
                for d in range(DH + 1):
                    d_w_t += d_ext[t, d] * squares[pair, 1, start + t, d]
                d_w[t] = d_w_t
            d_S = numpy.dot(d_ext, V1.T)  # d_num·Vᵀ + d_dot·1ᵀ
            d_V1 = numpy.dot(S.T, d_ext)  # its first DH columns: d_v
            if fresh:  # w = 0: no path to or from the initial state
                d_Q = numpy.zeros((L, DH), dtype)
                d_Cn0 = numpy.zeros((DH, DH + 1), dtype)
            else:
                weighted = d_ext * steps[pair, W, start:start + L].astype(dtype)[:, None]
                d_Q = numpy.dot(weighted, Cn0.T)  # w·(d_num·Cᵀ + d_dot·nᵀ)
                d_Cn0 = numpy.dot(Q.T, weighted)
            d_D = d_S * P
            d_S *= D  # now d_P
            d_Q += numpy.dot(d_S, K)
            d_K = numpy.dot(d_S.T, Q)
            kept = steps[pair, EMPTY, start + L - 1] != 0.0
            if (has_final or start != last_start) and not kept:
                w_T = steps[pair, W, start + L - 1]
                total = 0.0
                for i in range(DH):
                    for j in range(DH + 1):
                        total += dCn[i, j] * Cn0[i, j]
                        d_Cn0[i, j] += w_T * dCn[i, j]
                d_w[L - 1] += total
                k_dC = numpy.dot(K, dCn)  # [k·dC | k·dn]
                v_dC = numpy.dot(V1, dCn.T)  # v·dCᵀ + dn
                for s in range(L):
                    D_T = D[L - 1, s]
                    total = 0.0
                    for d in range(DH + 1):
                        total += k_dC[s, d] * V1[s, d]
                    for d in range(DH):
                        d_K[s, d] += D_T * v_dC[s, d]
                        d_V1[s, d] += D_T * k_dC[s, d]
                    d_D[L - 1, s] += total
                d_m[L - 1] += dm
            d_D *= D  # now d log D (0 above the diagonal)
            ones = numpy.ones(L, dtype)
            rows, columns = numpy.dot(d_D, ones), numpy.dot(ones, d_D)
            to_chosen = numpy.zeros(L)
            d_F = numpy.empty(L)
            d_m0 = 0.0
            for t in range(L):
                use_g = steps[pair, USE_G, start + t] != 0.0
                d_g = d_w[t] * steps[pair, W, start + t]
                d_m_t = 0.0 if steps[pair, EMPTY, start + t] != 0.0 else d_m[t] - rows[t] - d_g
                d_row = 0.0 if use_g else d_m_t
                d_g += d_m_t if use_g else 0.0
                to_chosen[int(steps[pair, CHOSEN, start + t])] += d_row
                d_F[t] = rows[t] + d_g + d_row
                d_m0 += d_g
            tail = 0.0
            for t in range(L - 1, -1, -1):
                d_i_t = columns[t] + to_chosen[t]
                tail += d_F[t] - d_i_t
                f = numpy.float64(f_pre[start + t, b, head])
                e = math.exp(-abs(f))
                sigmoid_minus = e / (1.0 + e) if f >= 0 else 1.0 / (1.0 + e)  # σ(−f)
                d_i[start + t, b, head] = d_i_t if inside[t] else 0.0
                d_f[start + t, b, head] = tail * sigmoid_minus if inside[t] else 0.0
            _scatter(d_Q, start, b, head, d_q, 1.0)
            _scatter(d_K, start, b, head, d_k, scale)
            _scatter(d_V1, start, b, head, d_v, 1.0)
            if kept:
                dCn = d_Cn0 + dCn
                dm = d_m0 + dm
            else:
                dCn, dm = d_Cn0, d_m0
        dC_out[b, head] = dCn[:, :DH]
        dn_out[b, head] = dCn[:, DH]
        dm_out[b, head] = dm


def chunkwise_form(q: Any, k: Any, v: Any, i_pre: Any, f_pre: Any, state: Any, valid: Any, eps: float,
                   with_backward: bool, chunk_size: int) -> tuple[Any, Any, Callable[..., dict[str, Any]] | None]:
    """xlstm.mlstm_parallel.chunkwise_form on NumPy arrays (same arguments and results, T ≥ 1), its chunks run
    inside one compiled call per block of (batch row, head) pairs."""
    steps_, batch, heads, _ = q.shape
    core = _Core(q.shape, q.dtype, state, valid, eps, chunk_size, with_backward)
    h = numpy.empty(q.shape, q.dtype)
    blocks = row_blocks(batch * heads, MIN_PAIRS)
    with BLAS.limit(limits=1, user_api="blas"):
        run_on_row_blocks(lambda first, last: core.forward(first, last, 0, batch, q, k, v, i_pre, f_pre, h), blocks)
    if not with_backward:
        return h, core.final_state(), None

    def backward(d_h: Any, d_final: Any) -> dict[str, Any]:
        """The forward's VJP, pairs on the row threads as forwards."""
        grads = [numpy.empty(q.shape, q.dtype) for _ in range(3)] + [numpy.empty(i_pre.shape, q.dtype)
                                                                    for _ in range(2)]
        with BLAS.limit(limits=1, user_api="blas"):
            run_on_row_blocks(lambda first, last: core.backward(first, last, 0, batch, q, k, v, f_pre, d_h, d_final,
                                                                *grads), blocks)
        return {**dict(zip(("q", "k", "v", "i", "f"), grads)), "initial_state": core.initial_gradient()}

    return h, core.final_state(), backward


def parallel_form(q: Any, k: Any, v: Any, i_pre: Any, f_pre: Any, state: Any, valid: Any, eps: float,
                  with_backward: bool) -> tuple[Any, Any, Callable[..., dict[str, Any]] | None]:
    """xlstm.mlstm_parallel.parallel_form on NumPy arrays: the whole window as one chunk."""
    return chunkwise_form(q, k, v, i_pre, f_pre, state, valid, eps, with_backward, q.shape[0])


class _Core:
    """The buffers of one run of the parallel form over [T, B, NH, DH]: the final state, what the backward keeps
    (indexed by pair b·NH + head) and the initial state's gradient; `forward` and `backward` run the pairs of
    batch rows row_start … row_stop − 1 whose arrays (q, k, v, …, local to those rows) they are given."""

    def __init__(self, shape: tuple, dtype: Any, state: Any, valid: Any, eps: float, chunk_size: int,
                 keep: bool) -> None:
        steps, batch, heads, size = shape
        self.state, self.eps, self.keep, self.heads = state, eps, keep, heads
        self.scale, self.chunk = 1.0 / math.sqrt(size), min(chunk_size, steps)
        self.valid = valid[..., 0] if valid is not None else numpy.ones((1, 1), numpy.bool_)
        self.has_valid = valid is not None
        self.final = [numpy.empty(part.shape, dtype) for part in state]
        self.d_initial = [numpy.empty(part.shape, dtype) for part in state]
        pairs, chunks = batch * heads, -(-steps // self.chunk)
        sizes = ((pairs, STEP_ROWS, steps), (pairs, 2, steps, self.chunk), (pairs, 2, steps, size + 1),
                 (pairs, chunks, size, size + 1), (pairs, chunks))
        self.kept = [numpy.empty(shape if keep else (0,) * len(shape), numpy.float64 if n in (0, 4) else dtype)
                     for n, shape in enumerate(sizes)]

    def _rows(self, parts: Any, start: int, stop: int) -> list:
        """Batch rows start … stop − 1 of each of `parts` (views)."""
        return [part[start:stop] for part in parts]

    def forward(self, first: int, last: int, row_start: int, row_stop: int, q: Any, k: Any, v: Any, i_pre: Any,
                f_pre: Any, h: Any) -> None:
        """Pairs first … last − 1 of the rows' local arrays."""
        valid = self.valid[:, row_start:row_stop] if self.has_valid else self.valid
        pair_start = row_start * self.heads
        _forward_pairs(first, last, q, k, v, i_pre, f_pre, valid, self.has_valid,
                       *self._rows(self.state, row_start, row_stop), self.eps, self.scale, self.chunk, h,
                       *self._rows(self.final, row_start, row_stop), self.keep,
                       *(part[pair_start:] for part in self.kept))

    def backward(self, first: int, last: int, row_start: int, row_stop: int, q: Any, k: Any, v: Any, f_pre: Any,
                 d_h: Any, d_final: Any, d_q: Any, d_k: Any, d_v: Any, d_i: Any, d_f: Any) -> None:
        """Pairs first … last − 1 of the rows' local arrays, d_h among them; d_final (None: zero) is the whole
        batch's."""
        valid = self.valid[:, row_start:row_stop] if self.has_valid else self.valid
        d_h = numpy.zeros(q.shape, q.dtype) if d_h is None else d_h
        has_final = d_final is not None
        d_final = (self._rows(d_final, row_start, row_stop) if has_final
                   else [numpy.zeros((row_stop - row_start,) + part.shape[1:], q.dtype) for part in self.state])
        pair_start = row_start * self.heads
        _backward_pairs(first, last, q, k, v, f_pre, valid, self.has_valid, self.eps, self.scale, self.chunk,
                        *(part[pair_start:] for part in self.kept), d_h, *d_final, has_final, d_q, d_k, d_v, d_i,
                        d_f, *self._rows(self.d_initial, row_start, row_stop))

    def final_state(self) -> Any:
        """The state after the last step (the given state's type)."""
        return type(self.state)(*self.final)

    def initial_gradient(self) -> Any:
        """The initial state's gradient, once `backward` has run on every pair."""
        return type(self.state)(*self.d_initial)


def unroll(x: Any, weights: Any, state: Any, valid: Any, eps: float, num_heads: int, output_gate: bool,
           chunk_size: int, with_backward: bool) -> tuple[Any, Any, Callable[..., dict[str, Any]] | None]:
    """xlstm.MLSTMCell.unroll with form="auto" (time-major x [T, B, I], T ≥ 1, chunks of chunk_size steps).

    Per block of batch rows, on the row threads: the rows' projection [1, x]·Wᵀ (one single-threaded BLAS
    product), the chunkwise parallel form of their pairs and the output gate; the backward likewise, its
    gradients written into the rows' [T, b, rows] pre-activation gradient (no concatenation) and projected back
    with two products. Returns (outputs [T, B, H], final_state, backward or None)."""
    steps, batch, input_size = x.shape
    dtype, rows = weights.dtype, weights.shape[0]
    units = (rows - 2 * num_heads) // (4 if output_gate else 3)
    size = units // num_heads
    gates = 3 * units
    core = _Core((steps, batch, num_heads, size), dtype, state, valid, eps, chunk_size, with_backward)
    outputs = numpy.empty((steps, batch, units), dtype)
    h_tilde = numpy.empty((steps, batch, num_heads, size), dtype) if output_gate else outputs.reshape(
        steps, batch, num_heads, size)
    saved = {}

    def heads_of(a: Any, start: int) -> Any:  # [T, b, rows] → the [T, b, NH, DH] view of one row block
        return a[..., start:start + units].reshape(a.shape[0], a.shape[1], num_heads, size)

    def forward(row_start: int, row_stop: int) -> None:
        x_rows = numpy.empty((steps, row_stop - row_start, 1 + input_size), dtype)  # [1, x_t], as the generic code
        x_rows[..., 0] = 1.0
        x_rows[..., 1:] = x[:, row_start:row_stop]
        x_rows = x_rows.reshape(-1, 1 + input_size)
        a = (x_rows @ weights.T).reshape(steps, row_stop - row_start, rows)
        core.forward(0, (row_stop - row_start) * num_heads, row_start, row_stop, heads_of(a, 0), heads_of(a, units),
                     heads_of(a, 2 * units), a[..., gates:gates + num_heads],
                     a[..., gates + num_heads:gates + 2 * num_heads], h_tilde[:, row_start:row_stop])
        o = None
        if output_gate:
            o = numpy.negative(a[..., gates + 2 * num_heads:])  # σ(a_o) = 1 / (1 + exp(−a_o)), in place
            with numpy.errstate(over="ignore"):  # exp(−a_o) = inf gives σ = 0, as it should
                numpy.exp(o, out=o)
            o += 1.0
            numpy.reciprocal(o, out=o)
            numpy.multiply(o, h_tilde[:, row_start:row_stop].reshape(steps, -1, units),
                           out=outputs[:, row_start:row_stop])
        saved[row_start] = (x_rows, a, o)

    blocks = row_blocks(batch, MIN_ROWS)
    with BLAS.limit(limits=1, user_api="blas"):
        run_on_row_blocks(forward, blocks)
    if not with_backward:
        return outputs, core.final_state(), None

    def backward(d_outputs: Any, d_final: Any) -> dict[str, Any]:
        """Per row block: through the output gate, the pairs' VJP, then the projection (two products)."""
        d_inputs = numpy.empty(x.shape, dtype)
        d_weights = {}

        def block(row_start: int, row_stop: int) -> None:
            x_rows, a, o = saved[row_start]
            d_a = numpy.empty(a.shape, dtype)
            d_out = None if d_outputs is None else d_outputs[:, row_start:row_stop]
            d_h = d_out
            if output_gate:
                h_rows = h_tilde[:, row_start:row_stop].reshape(steps, -1, units)
                if d_out is None:
                    d_a[..., gates + 2 * num_heads:] = 0.0
                else:
                    d_h = d_out * o
                    d_a[..., gates + 2 * num_heads:] = d_h * h_rows * (1.0 - o)
            d_h = None if d_h is None else d_h.reshape(steps, -1, num_heads, size)
            core.backward(0, (row_stop - row_start) * num_heads, row_start, row_stop, heads_of(a, 0),
                          heads_of(a, units), heads_of(a, 2 * units), a[..., gates + num_heads:gates + 2 * num_heads],
                          d_h, d_final, heads_of(d_a, 0),
                          heads_of(d_a, units), heads_of(d_a, 2 * units), d_a[..., gates:gates + num_heads],
                          d_a[..., gates + num_heads:gates + 2 * num_heads])
            d_a = d_a.reshape(-1, rows)
            d_weights[row_start] = d_a.T @ x_rows
            d_inputs[:, row_start:row_stop] = (d_a @ weights[:, 1:]).reshape(steps, -1, input_size)

        with BLAS.limit(limits=1, user_api="blas"):
            run_on_row_blocks(block, blocks)
        parts = [d_weights[start] for start, _ in blocks]
        return {"weights": functools.reduce(operator.add, parts), "inputs": d_inputs,
                "initial_state": core.initial_gradient()}

    return outputs, core.final_state(), backward
