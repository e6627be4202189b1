"""Weight initialisers: constant, uniform, glorot_uniform, orthogonal (all seeded).

An initialiser is called as `init(shape, dtype, stream)` where `stream` is a
`xlstm_backends.RandomStream`; it returns an array of that shape on the stream's backend.
Wherever a model takes an `initializer`, it also accepts a Python float (a constant),
a name such as "orthogonal", or one of the factory functions below, uncalled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from xlstm_backends import RandomStream


class Initializer:
    """Base of all initialisers: fills an array of `shape` on the stream's backend."""

    def __call__(self, shape: tuple[int, ...], dtype: Any, stream: RandomStream) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(Initializer):
    """Every element equal to `value` (the article fills its weights with 0.1)."""

    value: float = 0.0

    def __call__(self, shape: tuple[int, ...], dtype: Any, stream: RandomStream) -> Any:
        xp = stream.backend.xp
        return xp.full(shape, float(self.value), dtype=dtype, device=stream.backend.device)


@dataclass(frozen=True)
class Uniform(Initializer):
    """Independent draws from U[low, high)."""

    low: float = -0.05
    high: float = 0.05

    def __call__(self, shape: tuple[int, ...], dtype: Any, stream: RandomStream) -> Any:
        return stream.uniform(shape, self.low, self.high, dtype)


@dataclass(frozen=True)
class GlorotUniform(Initializer):
    """U[-l, l] with l = sqrt(6 / (fan_in + fan_out)): keeps activations' variance steady.

    For a weight matrix of shape [out, in] (our rows are outputs) the fans are in and out.
    """

    def __call__(self, shape: tuple[int, ...], dtype: Any, stream: RandomStream) -> Any:
        fan_out, fan_in = shape[0], math.prod(shape[1:])
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return stream.uniform(shape, -limit, limit, dtype)


@dataclass(frozen=True)
class Orthogonal(Initializer):
    """A (semi-)orthogonal matrix times `gain`: the QR factor of a Gaussian matrix, signs fixed."""

    gain: float = 1.0

    def __call__(self, shape: tuple[int, ...], dtype: Any, stream: RandomStream) -> Any:
        xp = stream.backend.xp
        rows, cols = shape[0], math.prod(shape[1:])
        tall = (max(rows, cols), min(rows, cols))
        q, r = xp.linalg.qr(stream.normal(tall, dtype))
        q = q * xp.sign(xp.linalg.diagonal(r))  # makes the factorisation unique, hence uniform
        if rows < cols:
            q = xp.matrix_transpose(q)
        return xp.reshape(q * float(self.gain), shape)


def constant(value: float = 0.0) -> Constant:
    """Initialiser filling with `value`."""
    return Constant(value)


def uniform(low: float = -0.05, high: float = 0.05) -> Uniform:
    """Initialiser drawing from U[low, high)."""
    if not low < high:
        raise ValueError(f"uniform initializer needs low < high, got low={low!r}, high={high!r}")
    return Uniform(low, high)


def glorot_uniform() -> GlorotUniform:
    """Glorot/Xavier uniform initialiser (TensorFlow's default for LSTM kernels)."""
    return GlorotUniform()


def orthogonal(gain: float = 1.0) -> Orthogonal:
    """Orthogonal initialiser scaled by `gain`."""
    return Orthogonal(gain)


FACTORIES: dict[str, Callable[[], Initializer]] = {
    "constant": constant,
    "uniform": uniform,
    "glorot_uniform": glorot_uniform,
    "orthogonal": orthogonal,
}


def resolve(name: str, spec: Any, default: Initializer) -> Initializer:
    """Turn what the user passed as argument `name` into an Initializer."""
    if spec is None:
        return default
    if isinstance(spec, Initializer):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return Constant(float(spec))
    if isinstance(spec, str) and spec in FACTORIES:
        return FACTORIES[spec]()
    if callable(spec) and spec in FACTORIES.values():
        return spec()
    raise ValueError(
        f"{name} must be a float, an xlstm.init initializer or one of {sorted(FACTORIES)}, got {spec!r}"
    )


def fused_weights(shape: tuple[int, int], initializer: Any, bias_initializer: Any, dtype: Any,
                  stream: RandomStream) -> Any:
    """A fused weight matrix [rows, 1 + inputs], the article's layout: column 0 (the bias) from
    `bias_initializer` (default 0.0), the other columns from `initializer` (default glorot_uniform)."""
    bias_init = resolve("bias_initializer", bias_initializer, constant(0.0))
    weights_init = resolve("initializer", initializer, glorot_uniform())
    rows, columns = shape
    return stream.backend.xp.concat([bias_init((rows, 1), dtype, stream), weights_init((rows, columns - 1), dtype, stream)],
                                    axis=1)
