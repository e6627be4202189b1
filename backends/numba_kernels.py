"""Compiled CPU kernels for the plain LSTM's time loop (the optional `fast` extra: numba).

The NumPy kernels pay for every step in calls: about thirty ufunc passes and copies over
[H, B] arrays in the backward step, each a trip through the interpreter, and NumPy's
float32 tanh on a CPU without AVX-512 runs scalar at ~3 ns an element, a third of a step
at the default model's size. Here each direction of the whole sequence is one compiled
call: per step one product (a hand-written kernel in 512-bit vectors, `_product`: forwards the whole step's
[1, x_t, h_{t-1}]·Wᵀ, backwards the recurrent term; for weights too big for it, an input projection
first and the recurrent term by `_product` or OpenBLAS) and one pass over each batch row that does the
whole step's pointwise work, its float32 units in explicit vectors (`_cell_vectors`, `_cell_gradient_vectors`). Everything is batch-major: gates
[B, 4H] in xlstm's order f, i, c, o, states [B, H]. Batch rows never meet, so the batch is cut into
row blocks and each runs the whole loop on a thread of its own (`row_threads`, XLSTM_THREADS).

float32 uses a rational approximation of tanh (Eigen's, clamped at ±7.9053: at most a
few units in the last place) in vectors; float64 uses `math.tanh`,
so the float64 numbers equal the generic array-API code's to rounding. Same interface as
`numpy_kernels`: `lstm_forward`, `lstm_backward`; and `lstm_backward_to_table` for `TableRows` inputs.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import llvmlite.binding
import numba
import numpy
import scipy.linalg.cython_blas  # noqa: F401 - the BLAS numba's np.dot calls: loaded before it is counted
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic, overload
from threadpoolctl import ThreadpoolController

from xlstm_backends.row_threads import row_blocks, run_on_row_blocks, thread_count
from xlstm_backends.workspace import WORKSPACE

DESCRIPTION = f"compiled kernels (numba {numba.__version__})"
empty = WORKSPACE.empty
# The compiled loops' per-step products run on one BLAS thread unless they are large: with
# NumPy's and SciPy's OpenBLAS each keeping two threads on two cores, the pools spun against
# each other and the main job ran at 0.30× PyTorch's speed instead of 0.61× (measured); at the
# large bench shape (B = 128, H = 512) one thread made the forward pass 1.8× torch's time against 1.5×.
BLAS = ThreadpoolController()
ONE_THREAD_BELOW = 1 << 24  # multiply-adds of one step's product [B, H]·[H, 4H]
# A thread of its own pays only for a block of at least 8 rows and 512 row-units (rows·H): below,
# OpenBLAS takes about as long for the block's product as for twice the rows (it streams all of W_h
# either way) and, at small H, handing work to a thread and rows sharing cache lines cost more than
# they save (B = 16: H = 64 0.75× the one-thread time, H = 32 1.02×, H = 5 1.49×; README).
MIN_ROWS, MIN_ROW_UNITS = 8, 512


def _row_blocks(batch: int, units: int) -> list[tuple[int, int]]:
    """The batch's row blocks, one per thread, each big enough to be worth its thread."""
    return row_blocks(batch, max(MIN_ROWS, -(-MIN_ROW_UNITS // units)))


def _hand_product(recurrent) -> bool:
    """Whether the time loops' per-step products go to `_product` rather than OpenBLAS (by W_h's size)."""
    return recurrent.nbytes <= HAND_PRODUCT_MAX_BYTES


def _fuses(weights, blocks: list[tuple[int, int]]) -> bool:
    """Whether the forward loop's step product takes in the input projection: W within FUSED_PRODUCT_MAX_BYTES, and
    every block filling `_product`'s row tiles or W small enough to stay in L1 (one-row tiles read all of W for
    every row: B = 4, H = 256, LSTM forward 6.4–6.8 ms fused against 5.4–5.7 with the projection apart; at the
    bench's tiny shape, B = 1, H = 5, fused is faster)."""
    rows = min(stop - start for start, stop in blocks)
    return weights.nbytes <= FUSED_PRODUCT_MAX_BYTES and (rows >= TILE_ROWS or weights.nbytes <= FUSED_ROW_MAX_BYTES)


def _unpacked(dtype) -> "Packed":
    """Empty packed weights, for a loop whose products OpenBLAS runs."""
    return Packed(numpy.empty((0, 0, 0), dtype), numpy.empty((0, 0), dtype))


def _blas_threads(blocks: list[tuple[int, int]], units: int):
    """A context that keeps the BLAS to one thread inside the time loops when the batch is split
    over threads (they already fill the cores) or the per-step product is small; else to
    XLSTM_THREADS (default: every usable CPU)."""
    rows = blocks[0][1] - blocks[0][0]
    one = len(blocks) > 1 or rows * units * 4 * units < ONE_THREAD_BELOW
    return BLAS.limit(limits=1 if one else thread_count(), user_api="blas")


JIT = {"error_model": "numpy", "nogil": True, "cache": True, "fastmath": {"contract", "arcp", "nsz"}}
# The per-step recurrent products run as `_product` (hand-written: W_h packed once per call, no
# transposes or temporaries per step) rather than OpenBLAS when W_h is at most 4 MiB (H ≤ 512 in float32,
# the largest measured; README h-nb), LSTM forward / backward on two threads, before → after: main job
# (H = 192) 6.6 → 4.5 ms / 10.0 → 7.9; medium (H = 256) 18.7 → 13.0 / 32.4 → 26.1; large (H = 512) 116
# → 115 / 218 → 212. Its tiles are TILE_ROWS batch rows by TILE_VECTORS vectors of VECTOR_BITS: 512
# where the CPU has AVX-512 (numba's own loops stay at 256 bits), 8 × 2 zmm accumulators (4 × 2 took
# 1.45× the time, 4 × 4 1.25× at the main job's forward product).
HAND_PRODUCT_MAX_BYTES = 4 << 20
# The forward loop's step product takes in the input projection, [1, x_t, h_{t-1}]·Wᵀ, when all of W fits this
# (no projected array [T, B, 4H] written and read back, no adds): main job's shape (W 0.7 MB), LSTM forward kept for
# backward, two threads, 3.8–3.9 ms with the projection against 3.3–3.5 fused; medium (1.6 MB) equal within the
# noise; large (W 8.4 MB, beyond L2) 105 ms fused against 97–102.
FUSED_PRODUCT_MAX_BYTES = 4 << 20
FUSED_ROW_MAX_BYTES = 32 << 10  # ... and, for blocks of fewer rows than a tile, when W stays in L1
VECTOR_BITS = 512 if llvmlite.binding.get_host_cpu_features().get("avx512f", False) else 256
TILE_ROWS, TILE_VECTORS = 8, 2

# Eigen's float tanh: x·P(x²)/Q(x²), clamped where tanh rounds to ±1 in float32.
TANH_CLAMP = 7.90531110763549805
TANH_P = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
          -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)
TANH_Q = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)


def tanh(x):  # noqa: D103 - replaced inside compiled code by the overload below
    return math.tanh(x)


@overload(tanh, inline="always", jit_options={"fastmath": JIT["fastmath"]})
def _tanh_for(x):
    """float32: the vectorisable rational approximation; float64 and others: math.tanh."""
    if isinstance(x, types.Float) and x.bitwidth == 32:
        clamp = numpy.float32(TANH_CLAMP)
        p0, p1, p2, p3, p4, p5, p6 = (numpy.float32(c) for c in TANH_P)
        q0, q1, q2, q3 = (numpy.float32(c) for c in TANH_Q)

        def rational(x):
            x = min(max(x, -clamp), clamp)
            x2 = x * x
            top = ((((((p6 * x2 + p5) * x2 + p4) * x2 + p3) * x2 + p2) * x2 + p1) * x2 + p0) * x
            bottom = ((q3 * x2 + q2) * x2 + q1) * x2 + q0
            return top / bottom

        return rational
    return lambda x: math.tanh(x)


class _Lanes:
    """Emits float32 arithmetic on vectors of `lanes` floats into one intrinsic's code: constants, fused
    multiply-adds and the same rational tanh as `tanh`."""

    def __init__(self, builder, lanes: int) -> None:
        self.builder, self.lanes = builder, lanes
        self.vector = ir.VectorType(ir.FloatType(), lanes)
        self._intrinsics = {name: cgutils.get_or_insert_function(builder.module, ir.FunctionType(
            self.vector, [self.vector] * arity), f"llvm.{name}.v{lanes}f32") for name, arity in
            (("fma", 3), ("minnum", 2), ("maxnum", 2))}

    def constant(self, value: float):
        """`value` in every lane."""
        return ir.Constant(self.vector, [float(numpy.float32(value))] * self.lanes)

    def call(self, name: str, *operands):
        """The LLVM vector intrinsic llvm.`name` (fma, minnum, maxnum) on operands."""
        return self.builder.call(self._intrinsics[name], list(operands))

    def tanh(self, x):
        """Eigen's rational tanh, as `tanh` computes it for one float32."""
        x = self.call("minnum", self.call("maxnum", x, self.constant(-TANH_CLAMP)), self.constant(TANH_CLAMP))
        x2 = self.builder.fmul(x, x)
        top, bottom = self.constant(TANH_P[-1]), self.constant(TANH_Q[-1])
        for c in reversed(TANH_P[:-1]):
            top = self.call("fma", top, x2, self.constant(c))
        for c in reversed(TANH_Q[:-1]):
            bottom = self.call("fma", bottom, x2, self.constant(c))
        return self.builder.fdiv(self.builder.fmul(top, x), bottom)

    def sigmoid(self, x):
        """σ(x) = ½·tanh(½x) + ½, as the loops compute it."""
        half = self.constant(0.5)
        return self.call("fma", half, self.tanh(self.builder.fmul(half, x)), half)


def _row_vectors(arrays: tuple, unit_array: int, body):
    """The typing and code of an intrinsic over one batch row's contiguous 1-D arrays of one dtype (None, i.e. not
    this intrinsic, for others): a loop over the row's whole vectors of VECTOR_BITS in H (the length of
    arrays[unit_array]), body(lanes, load, store, units, j) emitting vector j's work with load(k, offset) and
    store(value, k, offset) on arrays[k] from the unit offset; it returns how many units that was. Only float32
    runs in vectors (float64 needs math.tanh): for other dtypes it returns 0, and the caller's scalar loop does
    every unit, as it does those past the whole vectors. Numba's own vectoriser does not fuse these passes (the
    many arrays might overlap, too many to check) and keeps its loops at 256 bits."""
    if not all(isinstance(kind, types.Array) and kind.ndim == 1 and kind.layout == "C" and kind.dtype == arrays[0].dtype
               for kind in arrays):
        return None
    vectorised = arrays[0].dtype == types.float32

    def codegen(context, builder, signature, args):
        intp = context.get_value_type(types.intp)
        made = [context.make_array(kind)(context, builder, value) for kind, value in zip(signature.args, args)]
        units = cgutils.unpack_tuple(builder, made[unit_array].shape, 1)[0]
        if not vectorised:
            return ir.Constant(intp, 0)
        lanes = _Lanes(builder, VECTOR_BITS // 32)
        width = ir.Constant(intp, lanes.lanes)
        at = lambda k, offset: builder.bitcast(builder.gep(made[k].data, [offset]),  # noqa: E731
                                               lanes.vector.as_pointer())
        load = lambda k, offset: builder.load(at(k, offset), align=4)  # noqa: E731
        store = lambda value, k, offset: builder.store(value, at(k, offset), align=4)  # noqa: E731
        with cgutils.for_range(builder, builder.sdiv(units, width)) as loop:
            body(lanes, load, store, units, builder.mul(loop.index, width))
        return builder.mul(builder.sdiv(units, width), width)

    return types.intp(*arrays), codegen


def _gate_offsets(builder, units, j) -> list:
    """Unit offset j in each of the four gates' blocks of a [4H] row."""
    return [builder.add(j, builder.mul(units, ir.Constant(units.type, k))) for k in range(4)]


@intrinsic
def _cell_vectors(typingctx, a, act, mask, c, tanh_c, h, out):
    """An intrinsic cell_vectors(a, act, mask, c, tanh_c, h, out) -> n: one batch row's forward step for its units
    j < n (`_row_vectors`), all four gates and the state in one pass: act [4H] = σ(a_f), σ(a_i), tanh(a_c), σ(a_o)
    from the pre-activations a [4H]; c [H] = f⊙c + i⊙(g⊙mask); tanh_c [H] = tanh(c); h, out [H] = o⊙tanh(c)."""

    def body(lanes, load, store, units, j):
        builder = lanes.builder
        gate_at = _gate_offsets(builder, units, j)
        f, i, g, o = (activate(load(0, offset)) for activate, offset in
                      zip((lanes.sigmoid, lanes.sigmoid, lanes.tanh, lanes.sigmoid), gate_at))
        for value, offset in zip((f, i, g, o), gate_at):
            store(value, 1, offset)
        c_new = lanes.call("fma", f, load(3, j), builder.fmul(i, builder.fmul(g, load(2, j))))
        tanh_c_new = lanes.tanh(c_new)
        h_new = builder.fmul(o, tanh_c_new)
        for value, k in ((c_new, 3), (tanh_c_new, 4), (h_new, 5), (h_new, 6)):
            store(value, k, j)

    return _row_vectors((a, act, mask, c, tanh_c, h, out), 3, body)


@intrinsic
def _cell_gradient_vectors(typingctx, act, c_prev, tanh_c, mask, d_out, d_c, d_h, d):
    """An intrinsic cell_gradient_vectors(act, c_prev, tanh_c, mask, d_out, d_c, d_h, d) -> n: one batch row's
    backward step for its units j < n (`_row_vectors`), as `_backward_loop`'s scalar loop computes it: d [4H] the
    pre-activation gradients from the kept activations act [4H], c_{t-1} and tanh(c_t) [H] and the incoming
    d_out, d_c, d_h [H]; d_c becomes the gradient of c_{t-1}."""

    def body(lanes, load, store, units, j):
        builder = lanes.builder
        mul = lambda *factors: functools.reduce(builder.fmul, factors)  # noqa: E731
        one = lanes.constant(1.0)
        gate_at = _gate_offsets(builder, units, j)
        f, i, g, o = (load(0, offset) for offset in gate_at)
        tanh_c_j, m = load(2, j), load(3, j)
        dh = builder.fadd(load(6, j), load(4, j))
        dc = lanes.call("fma", mul(dh, o), builder.fsub(one, mul(tanh_c_j, tanh_c_j)), load(5, j))
        gradients = (mul(dc, load(1, j), f, builder.fsub(one, f)), mul(dc, g, m, i, builder.fsub(one, i)),
                     mul(dc, i, m, builder.fsub(one, mul(g, g))), mul(dh, tanh_c_j, o, builder.fsub(one, o)))
        for value, offset in zip(gradients, gate_at):
            store(value, 7, offset)
        store(builder.fmul(dc, f), 5, j)

    return _row_vectors((act, c_prev, tanh_c, mask, d_out, d_c, d_h, d), 1, body)


def _tile_of(rows: int):
    """An intrinsic tile(x, w, out, b, n): out[b : b + rows, n : n + C] = x[b : b + rows]·w for x [R, K],
    one packed chunk of columns w [K, C] (C = TILE_VECTORS·lanes), out [R, N], rows contiguous. Its
    accumulators are vector registers (LLVM vector types and fma), which numba's own vectoriser does
    not produce for this loop nest."""

    @intrinsic
    def tile(typingctx, x, w, out, b, n):
        dtype = x.dtype
        lanes = VECTOR_BITS // dtype.bitwidth

        def codegen(context, builder, signature, args):
            x_ary, w_ary, out_ary = (context.make_array(kind)(context, builder, value)
                                     for kind, value in zip(signature.args[:3], args[:3]))
            intp = context.get_value_type(types.intp)
            scalar = context.get_value_type(dtype)
            vector = ir.VectorType(scalar, lanes)
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3),
                                                 f"llvm.fma.v{lanes}f{dtype.bitwidth}")
            size = ir.Constant(intp, dtype.bitwidth // 8)
            x_step, w_step, out_step = (builder.sdiv(cgutils.unpack_tuple(builder, ary.strides, 2)[0], size)
                                        for ary in (x_ary, w_ary, out_ary))
            depth = cgutils.unpack_tuple(builder, x_ary.shape, 2)[1]
            at = lambda base, *offsets: builder.gep(base, [functools.reduce(builder.add, offsets)])  # noqa: E731
            as_vector = lambda pointer: builder.bitcast(pointer, vector.as_pointer())  # noqa: E731
            row_of = lambda r: builder.mul(builder.add(args[3], ir.Constant(intp, r)), x_step)  # noqa: E731
            columns = [ir.Constant(intp, v * lanes) for v in range(TILE_VECTORS)]
            zero = ir.Constant(vector, None)
            sums = [[cgutils.alloca_once_value(builder, zero) for _ in columns] for _ in range(rows)]
            undefined, first = ir.Constant(vector, ir.Undefined), ir.Constant(ir.IntType(32), 0)
            broadcast = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
            x_rows = [at(x_ary.data, row_of(r)) for r in range(rows)]
            with cgutils.for_range(builder, depth) as loop:
                w_row = builder.mul(loop.index, w_step)
                ws = [builder.load(as_vector(at(w_ary.data, w_row, column)), align=1) for column in columns]
                for r in range(rows):
                    value = builder.load(at(x_rows[r], loop.index))
                    xs = builder.shuffle_vector(builder.insert_element(undefined, value, first), undefined, broadcast)
                    for v, w_vector in enumerate(ws):
                        builder.store(builder.call(fma, [xs, w_vector, builder.load(sums[r][v])]), sums[r][v])
            for r in range(rows):
                out_row = builder.mul(builder.add(args[3], ir.Constant(intp, r)), out_step)
                for v, column in enumerate(columns):
                    builder.store(builder.load(sums[r][v]), as_vector(at(out_ary.data, out_row, args[4], column)),
                                  align=1)
            return context.get_dummy_value()

        return types.void(x, w, out, types.intp, types.intp), codegen

    return tile


_tile_rows, _tile_row = _tile_of(TILE_ROWS), _tile_of(1)


class Packed(NamedTuple):
    """A product's right operand w [K, N] as `_product` reads it (`packed_columns`)."""

    chunks: numpy.ndarray  # [N // C, K, C]: whole chunks of C = TILE_VECTORS vectors' columns, each contiguous
    rest: numpy.ndarray  # [K, N % C]: the columns past the last whole chunk


def packed_columns(w) -> Packed:
    """w [K, N] (any strides: a transposed or sliced view is read once, not copied first) in chunks of columns, so
    that a tile's pass over k reads consecutive lines (in W_h's own rows of 4H = 2048 floats, the 32 columns'
    lines lie 8 KB apart and all land in the same cache sets)."""
    depth, width = w.shape
    columns = TILE_VECTORS * VECTOR_BITS // (8 * w.itemsize)
    full = width // columns * columns
    chunks = numpy.ascontiguousarray(w[:, :full].reshape(depth, full // columns, columns).transpose(1, 0, 2))
    return Packed(chunks, numpy.ascontiguousarray(w[:, full:]))


@numba.njit(**JIT)
def _product(x, packed, rest, out):
    """out = x·w for x [R, K], w [K, N] given as `packed_columns(w)` (packed, rest), out [R, N] (rows contiguous):
    the per-step product, with its weights packed once per call. Whole tiles by `_tile_rows`, leftover rows
    by `_tile_row`, the columns past the last whole chunk by a plain loop over `rest`; every entry sums its K
    products in order from zero."""
    rows, depth = x.shape
    chunks, _, columns = packed.shape
    full_rows, full_cols = rows - rows % TILE_ROWS, chunks * columns
    for chunk in range(chunks):
        for b in range(0, full_rows, TILE_ROWS):
            _tile_rows(x, packed[chunk], out, b, chunk * columns)
        for b in range(full_rows, rows):
            _tile_row(x, packed[chunk], out, b, chunk * columns)
    for b in range(rows if rest.shape[1] else 0):
        out_rest = out[b, full_cols:]
        out_rest[:] = 0
        for k in range(depth):
            value, w_rest = x[b, k], rest[k]
            for n in range(out_rest.size):
                out_rest[n] += value * w_rest[n]


@numba.njit(**JIT)
def _activations(row, act, units: int, j: int, half):
    """Unit j's four gates from the pre-activations row [4H] into act [4H] (f, i, o by σ(a) = ½·tanh(½a) + ½, the
    candidate by tanh), returned: the scalar twin of `_cell_vectors`, for float64 and the units past its vectors."""
    f = half * tanh(half * row[j]) + half
    i = half * tanh(half * row[units + j]) + half
    g = tanh(row[2 * units + j])
    o = half * tanh(half * row[3 * units + j]) + half
    act[j], act[units + j], act[2 * units + j], act[3 * units + j] = f, i, g, o
    return f, i, g, o


@numba.njit(**JIT)
def _forward_loop(inputs, projected, bias, recurrent, packed, rest, c, h, masks, valid, outputs, gates, cells,
                  tanh_cells, inputs_and_h, keep, hand, one, start, stop):
    """Run every step in place for the batch rows [start, stop) (rows never meet, so blocks of
    rows can run on separate threads). Each step's pre-activations are one product: with `projected` [0, b, 4H]
    the whole step's, [1, x_t, h_{t-1}]·Wᵀ by `_product` (the row written into inputs_and_h [T, b, 1 + I + H] first,
    from inputs [T, B, I] and h, while in cache; packed, rest: `packed_columns` of Wᵀ [1 + I + H, 4H] with the
    forget bias in its first row); else projected [T, b, 4H] holds the block's inputs·W_xᵀ and bias [4H] (with
    the forget bias) is added here (rather than in a pass of its own over projected: 0.8 ms of the main job's
    step), and the product is the recurrent term only: by `_product` with `hand` (packed, rest from W_hᵀ
    [H, 4H]), else by OpenBLAS with `recurrent` W_h [4H, H]. c, h [B, H] the
    state, updated; masks [T, B, H] or [0, B, H]; valid [T, B] or [0, B]; outputs [T, B, H]. The block's own
    arrays, indexed from its first row: with `keep` every step's values are kept for the backward pass (gates
    [T, b, 4H], cells [T + 1, b, H], tanh_cells [T, b, H], h_{t-1} in inputs_and_h); without it gates and
    tanh_cells have one step, reused. Gates in xlstm's order f, i, c, o.

    Each inner loop runs over one contiguous row with no branch inside, so that the
    compiler vectorises it; rows that differ (finished, dropout) choose their loop outside.
    """
    steps, _, width = inputs_and_h.shape
    four_units = gates.shape[2]
    units = four_units // 4
    fused = projected.shape[0] == 0
    carried = width - units
    half, zero = one / (one + one), one - one  # constants in the arrays' dtype (a literal would be float64)
    no_mask = numpy.ones(units, gates.dtype)
    h_t = numpy.empty((0 if hand else units, stop - start), gates.dtype)
    a = numpy.empty((stop - start, four_units), gates.dtype)
    for t in range(steps):
        slot = t if keep else 0
        if fused:
            inputs_and_h[t, :, 0] = one
            inputs_and_h[t, :, 1:carried] = inputs[t, start:stop]
        if keep or fused:
            inputs_and_h[t, :, carried:] = h[start:stop]
        if keep:
            cells[t] = c[start:stop]
        if fused:
            _product(inputs_and_h[t], packed, rest, a)
        elif hand:
            _product(h[start:stop], packed, rest, a)
        else:
            # W_h·h_{t-1}ᵀ, then transposed: OpenBLAS runs this orientation faster than h_{t-1}·W_hᵀ
            # (1.04× at B = 32, H = 192; 1.34× at H = 256), the two small copies included.
            h_t[:] = h[start:stop].T
            a[:] = numpy.dot(recurrent, h_t).T
        for b in range(start, stop):
            row, act = a[b - start], gates[slot, b - start]
            if not fused:
                x = projected[t, b - start]
                for k in range(four_units):
                    row[k] += x[k] + bias[k]
            mask = masks[t, b] if masks.shape[0] else no_mask
            cb, hb, tanh_c, out = c[b], h[b], tanh_cells[slot, b - start], outputs[t, b]
            if valid.shape[0] == 0 or valid[t, b]:
                for j in range(_cell_vectors(row, act, mask, cb, tanh_c, hb, out), units):
                    f, i, g, o = _activations(row, act, units, j, half)
                    c_new = f * cb[j] + i * (g * mask[j])
                    cb[j] = c_new
                    tanh_c[j] = tanh(c_new)
                    hb[j] = o * tanh_c[j]
                    out[j] = hb[j]
            else:  # a finished row keeps its state; its output is zero
                for j in range(units):
                    f, i, g, o = _activations(row, act, units, j, half)
                    tanh_c[j] = tanh(f * cb[j] + i * (g * mask[j]))
                    out[j] = zero
    if keep:
        cells[steps] = c[start:stop]


@numba.njit(**JIT)
def _backward_loop(gates, cells, tanh_cells, masks, valid, recurrent, packed, rest, d_outputs, d_c, d_h, d_gates, one,
                   hand, start, stop):
    """Walk the steps backwards in place for the batch rows [start, stop): d_c, d_h [B, H]
    become the initial state's gradients and the block's d_gates [T, b, 4H] every step's pre-activation
    gradients; gates, cells, tanh_cells are the block's own (`_forward_loop`), masks, valid and d_outputs [T, B, H]
    the whole batch's. The per-step product by `_product` with `hand` (packed, rest: `packed_columns` of W_h
    [4H, H]), else by OpenBLAS with `recurrent` W_hᵀ [H, 4H]."""
    steps, rows, four_units = gates.shape
    units = four_units // 4
    no_mask = numpy.ones(units, gates.dtype)
    d_gates_t = numpy.empty((0 if hand else four_units, rows), gates.dtype)
    d_h_prev = numpy.empty((rows, units), gates.dtype)
    every_row = numpy.ones(stop, numpy.bool_)  # without lengths every row is alive at every step
    for t in range(steps - 1, -1, -1):
        alive = every_row if valid.shape[0] == 0 else valid[t]
        for b in range(start, stop):
            d = d_gates[t, b - start]
            if not alive[b]:  # a padded step passes the state's gradient straight through
                d[:] = 0
                continue
            act = gates[t, b - start]
            f, i, g, o = act[:units], act[units : 2 * units], act[2 * units : 3 * units], act[3 * units :]
            d_f, d_i, d_g, d_o = d[:units], d[units : 2 * units], d[2 * units : 3 * units], d[3 * units :]
            mask = masks[t, b] if masks.shape[0] else no_mask
            c_prev, tanh_c, d_out = cells[t, b - start], tanh_cells[t, b - start], d_outputs[t, b]
            dcb, dhb = d_c[b], d_h[b]
            for j in range(_cell_gradient_vectors(act, c_prev, tanh_c, mask, d_out, dcb, dhb, d), units):
                dh = dhb[j] + d_out[j]
                dc = dcb[j] + dh * o[j] * (one - tanh_c[j] * tanh_c[j])
                d_f[j] = dc * c_prev[j] * f[j] * (one - f[j])
                d_i[j] = dc * g[j] * mask[j] * i[j] * (one - i[j])
                d_o[j] = dh * tanh_c[j] * o[j] * (one - o[j])
                d_g[j] = dc * i[j] * mask[j] * (one - g[j] * g[j])
                dcb[j] = dc * f[j]
        if hand:
            _product(d_gates[t], packed, rest, d_h_prev)
        else:
            d_gates_t[:] = d_gates[t].T  # W_hᵀ·d_gatesᵀ: OpenBLAS's faster orientation (forward loop)
            d_h_prev[:] = numpy.dot(recurrent, d_gates_t).T
        for b in range(start, stop):
            if alive[b]:
                d_h[b] = d_h_prev[b - start]


class RowsCache(NamedTuple):
    """What the backward pass needs from one row block's forward loop (batch-major, the block's rows only)."""

    inputs_and_h: numpy.ndarray  # [T, b, 1 + I + H]: 1, x_t, h_{t-1}, the rows of the whole weight gradient
    gates: numpy.ndarray  # activated f, i and tanh candidate, o: [T, b, 4H]
    cells: numpy.ndarray  # c_{t-1} for every step, then c_T: [T + 1, b, H]
    tanh_cells: numpy.ndarray  # tanh(c_t) [T, b, H]


class ForwardCache(NamedTuple):
    """What the backward pass needs from the forward pass: the weights, and each row block's loop."""

    weights: numpy.ndarray  # W as given, [4H, 1 + I + H]
    blocks: list[tuple[int, int]]  # [start, stop) of every row block
    rows: list[RowsCache]  # one per block
    masks: numpy.ndarray  # dropout masks [T, B, H], or [0, B, H] without dropout
    valid: numpy.ndarray  # [T, B] booleans, or [0, B] without lengths


def lstm_forward(inputs, weights, c0, h0, forget_bias: float, masks=None, valid=None, keep_for_backward=False):
    """Unroll the plain LSTM over time-major inputs [T, B, I].

    Returns (outputs [T, B, H], c_T, h_T, cache or None), as `numpy_kernels.lstm_forward`.
    """
    steps, batch, input_size = inputs.shape
    units = c0.shape[1]
    dtype = weights.dtype
    inputs = numpy.asarray(inputs, dtype)
    bias = weights[:, 0].copy()
    bias[:units] += forget_bias
    blocks = _row_blocks(batch, units)
    fused = _fuses(weights, blocks)
    recurrent = weights[:, 1 + input_size :]  # W_h [4H, H]
    hand = fused or _hand_product(recurrent)
    if fused:  # Wᵀ [1 + I + H, 4H], its first row the bias with the forget bias: the step's whole product
        packed = packed_columns(weights.T)
        chunks, _, columns = packed.chunks.shape
        packed.chunks[:, 0, :] = bias[: chunks * columns].reshape(chunks, columns)
        packed.rest[0] = bias[chunks * columns :]
    elif hand:
        packed = packed_columns(recurrent.T)
    else:
        packed = _unpacked(dtype)
    recurrent = numpy.empty((0, 0), dtype) if hand else numpy.ascontiguousarray(recurrent)  # for OpenBLAS
    masks = numpy.empty((0, batch, units), dtype) if masks is None else numpy.ascontiguousarray(masks, dtype)
    valid = numpy.empty((0, batch), numpy.bool_) if valid is None else numpy.ascontiguousarray(valid[:, :, 0])
    kept = steps if keep_for_backward else 1
    c, h = numpy.array(c0, dtype, order="C"), numpy.array(h0, dtype, order="C")  # copies: updated in place
    outputs = empty((steps, batch, units), dtype)
    caches: list = [None] * len(blocks)
    one = dtype.type(1.0)

    def block(start: int, stop: int) -> None:
        """Everything of one block on this thread, in arrays of its own: its time loop and, for weights too big for
        the step's whole product, first its inputs·W_xᵀ (the loop adds the bias). An OpenBLAS-threaded projection
        for the whole batch, with NumPy imported before xlstm (so without its OPENBLAS_THREAD_TIMEOUT), left pool
        threads spinning on the cores the loops then ran on (large shape: loop 87–91 ms after it, 57–59 ms alone;
        README h-lg)."""
        rows = stop - start
        inputs_and_h = empty((steps, rows, 1 + input_size + (units if keep_for_backward or fused else 0)), dtype)
        projected = empty((0 if fused else steps, rows, 4 * units), dtype)
        if not fused:  # the loop writes [1, x_t] itself, step by step, when it has no projection
            inputs_and_h[:, :, 0] = 1
            inputs_and_h[:, :, 1 : 1 + input_size] = inputs[:, start:stop]
            numpy.matmul(inputs_and_h[:, :, 1 : 1 + input_size].reshape(steps * rows, input_size),
                         weights[:, 1 : 1 + input_size].T, out=projected.reshape(steps * rows, 4 * units))
        gates = empty((kept, rows, 4 * units), dtype)
        tanh_cells = empty((kept, rows, units), dtype)
        cells = empty((steps + 1 if keep_for_backward else 0, rows, units), dtype)
        _forward_loop(inputs, projected, bias, recurrent, *packed, c, h, masks, valid, outputs, gates, cells,
                      tanh_cells, inputs_and_h, keep_for_backward, hand, one, start, stop)
        if keep_for_backward:
            caches[blocks.index((start, stop))] = RowsCache(inputs_and_h, gates, cells, tanh_cells)

    with _blas_threads(blocks, units):
        run_on_row_blocks(block, blocks)
    cache = ForwardCache(weights, blocks, caches, masks, valid) if keep_for_backward else None
    return outputs, c, h, cache


def backward_buffers(weights, input_size: int, units: int, steps: int, d_outputs, d_c, d_h) -> tuple:
    """What a backward loop reads and writes, batch-major in the weights' dtype: d_outputs [T, B, H]
    (zeros when None), copies of d_c and d_h (updated in place), d_gates [T, B, 4H] to fill, and
    the recurrent weights transposed, [H, 4H]."""
    d_outputs, d_c, d_h = _cotangents(weights.dtype, steps, d_outputs, d_c, d_h)
    d_gates = empty((steps, d_c.shape[0], 4 * units), weights.dtype)
    recurrent_t = numpy.ascontiguousarray(weights[:, 1 + input_size :].T)
    return d_outputs, d_c, d_h, d_gates, recurrent_t


def _cotangents(dtype, steps: int, d_outputs, d_c, d_h) -> tuple:
    """d_outputs [T, B, H] batch-major in `dtype` (zeros when None), and copies of d_c, d_h (updated in place)."""
    if d_outputs is None:
        d_outputs = numpy.zeros((steps, *d_c.shape), dtype)
    d_outputs = numpy.ascontiguousarray(d_outputs, dtype)
    return d_outputs, numpy.array(d_c, dtype, order="C"), numpy.array(d_h, dtype, order="C")


def lstm_backward(cache: ForwardCache, d_outputs, d_c, d_h):
    """Backpropagate through the loop of `lstm_forward`, each row block on the thread it ran on forwards: its
    time loop, then its share of the weight gradient (one product over its rows [1, x_t, h_{t-1}]) and of the
    input gradient, on one BLAS thread (a lone block's after its loop, on the library's threads); the blocks'
    weight gradients are summed.

    Returns (d_weights [4H, 1 + I + H], d_inputs [T, B, I], d_c0, d_h0).
    """
    return _backward(cache, d_outputs, d_c, d_h, None, None)


def lstm_backward_to_table(cache: ForwardCache, d_outputs, d_c, d_h, table, ids):
    """`lstm_backward` for inputs that were rows of `table` [V, I] (`xlstm.TableRows`), input (t, b) read from
    row ids[t·B + b]: returns (d_weights, d_table [V, I], d_c0, d_h0).

    With no more table rows than positions per block, each block adds its pre-activation gradients by id into
    its own [V, 4H] (the gradient of the table's projection P = table·W_xᵀ), and then d_W_x = Pᵀ-gradient·table,
    d_bias its column sums and d_table = P-gradient·W_x, once per table row: no input gradient per position and
    the blocks' weight-gradient products over H columns instead of 1 + I + H (main job, per block: 2.7–2.8 ms
    → 2.0 ms for these products, one BLAS thread). Else the per-position input gradients, added by id.
    """
    return _backward(cache, d_outputs, d_c, d_h, numpy.asarray(table), numpy.asarray(ids))


def _backward(cache: ForwardCache, d_outputs, d_c, d_h, table, ids):
    """`lstm_backward`, or with a table and ids `lstm_backward_to_table`."""
    weights, blocks = cache.weights, cache.blocks
    steps, _, width = cache.rows[0].inputs_and_h.shape
    units = weights.shape[0] // 4
    input_size = width - 1 - units
    dtype = weights.dtype
    d_outputs, d_c, d_h = _cotangents(dtype, steps, d_outputs, d_c, d_h)
    batch = d_c.shape[0]
    folds = _table_folds(table, blocks, steps * batch)
    recurrent = weights[:, 1 + input_size :]  # W_h [4H, H]
    hand = _hand_product(recurrent)
    packed = packed_columns(recurrent) if hand else _unpacked(dtype)
    recurrent = numpy.empty((0, 0), dtype) if hand else numpy.ascontiguousarray(recurrent.T)  # W_hᵀ for OpenBLAS
    d_inputs = None if folds else empty((steps, batch, input_size), dtype)
    d_gates: list = [None] * len(blocks)  # each block's [T, b, 4H]
    d_weights: list = [None] * len(blocks)  # each block's share: of all of W, or folding of W_h only
    d_projections: list = [None] * len(blocks)  # folding: each block's [V, 4H], its d_gates added by id
    one = dtype.type(1.0)

    def loop(start: int, stop: int) -> None:
        """One block's backward loop, on this thread."""
        k = blocks.index((start, stop))
        kept = cache.rows[k]
        d_gates[k] = empty((steps, stop - start, 4 * units), dtype)
        _backward_loop(kept.gates, kept.cells, kept.tanh_cells, cache.masks, cache.valid, recurrent, *packed,
                       d_outputs, d_c, d_h, d_gates[k], one, hand, start, stop)

    def products(start: int, stop: int) -> None:
        """One block's shares of the weight and input gradients, from its d_gates."""
        k, rows = blocks.index((start, stop)), stop - start
        flat_d_gates = d_gates[k].reshape(steps * rows, 4 * units)
        inputs_and_h = cache.rows[k].inputs_and_h.reshape(steps * rows, width)
        if folds:
            d_weights[k] = flat_d_gates.T @ inputs_and_h[:, 1 + input_size :]
            d_projections[k] = numpy.zeros((table.shape[0], 4 * units), dtype)
            block_ids = numpy.ascontiguousarray(ids.reshape(steps, batch)[:, start:stop]).reshape(-1)
            _scatter_add_loop(block_ids, flat_d_gates, d_projections[k])
            return
        d_weights[k] = flat_d_gates.T @ inputs_and_h
        block_d_inputs = empty((steps, rows, input_size), dtype)
        numpy.matmul(flat_d_gates, weights[:, 1 : 1 + input_size], out=block_d_inputs.reshape(steps * rows,
                                                                                           input_size))
        d_inputs[:, start:stop] = block_d_inputs

    with _blas_threads(blocks, units):
        if len(blocks) > 1:  # each thread goes on to its own products: no hand-off to OpenBLAS's threads
            run_on_row_blocks(lambda start, stop: (loop(start, stop), products(start, stop)), blocks)
        else:
            loop(*blocks[0])
    if len(blocks) == 1:  # one block: its products on as many BLAS threads as the library is given
        products(*blocks[0])
    if not folds:
        total = _summed(d_weights)
        if table is None:
            return total, d_inputs, d_c, d_h
        d_table = numpy.zeros(table.shape, dtype)
        _scatter_add_loop(ids, d_inputs.reshape(steps * batch, input_size), d_table)
        return total, d_table, d_c, d_h
    d_projection = _summed(d_projections)
    total = numpy.empty(weights.shape, dtype)
    total[:, 0] = d_projection.sum(axis=0)
    total[:, 1 : 1 + input_size] = d_projection.T @ table
    total[:, 1 + input_size :] = _summed(d_weights)
    return total, d_projection @ weights[:, 1 : 1 + input_size], d_c, d_h


def _table_folds(table, blocks: list[tuple[int, int]], positions: int) -> bool:
    """Whether a table's gradient is worth forming by rows ([V, 4H] per block) rather than by positions: at most
    as many table rows as the positions of a row block. (Projecting the table's rows once in the forward pass
    too, each step adding its rows' projections to h_{t-1}·W_hᵀ, measured slower at the main job's shape than
    the step's whole product [1, x_t, h_{t-1}]·Wᵀ: LSTM forward 3.40–3.53 ms against 3.02–3.21.)"""
    return table is not None and table.shape[0] * len(blocks) <= positions


def _summed(parts: list):
    """The sum of the blocks' partial arrays, into the first."""
    total = parts[0]
    for other in parts[1:]:
        total += other
    return total


@numba.njit(error_model="numpy", nogil=True, cache=True)  # no fastmath: the sums keep IEEE order
def _scatter_add_loop(ids, values, total):
    """total[ids[k]] += values[k] for every k, in order; an id outside total's rows is an error."""
    for k in range(ids.shape[0]):
        row = ids[k]
        if row < 0 or row >= total.shape[0]:
            raise IndexError("scatter_add_rows: an id lies outside [0, num_rows)")
        target, source = total[row], values[k]
        for j in range(source.shape[0]):
            target[j] += source[j]
