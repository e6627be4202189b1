"""Numerically careful elementwise helpers the array API standard does not provide."""
from __future__ import annotations

from typing import Any

from xlstm_backends import float_dtype
from xlstm.checks import (
    check_integer,
    check_positive_int,
    check_range,
    device_of,
    namespace_of,
)


def sigmoid(x: Any) -> Any:
    """1 / (1 + e^-x), computed from e^-|x| so it never overflows."""
    xp = namespace_of(x=x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def log_softmax(logits: Any, axis: int = -1) -> Any:
    """log(softmax(logits)) along `axis`, shifted by the maximum so exp never overflows."""
    xp = namespace_of(logits=logits)
    shifted = logits - xp.max(logits, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def softmax(logits: Any, axis: int = -1) -> Any:
    """exp(logits) normalised to sum to one along `axis`, computed stably."""
    xp = namespace_of(logits=logits)
    shifted = xp.exp(logits - xp.max(logits, axis=axis, keepdims=True))
    return shifted / xp.sum(shifted, axis=axis, keepdims=True)


def normalise(x: Any, epsilon: float) -> tuple[Any, Any]:
    """x̂ = (x − mean) / σ over the last axis, and 1/σ, where σ² = biased variance + epsilon.

    Layer norm is x̂·gain + shift: TensorFlow 1's `layers.layer_norm`, epsilon inside the root.
    """
    xp = namespace_of(x=x)
    centered = x - xp.mean(x, axis=-1, keepdims=True)
    inverse_std = 1.0 / xp.sqrt(xp.mean(centered * centered, axis=-1, keepdims=True) + epsilon)
    return centered * inverse_std, inverse_std


def one_hot(indices: Any, depth: int, dtype: Any = None) -> Any:
    """[..., depth] float array with a 1 at each index (the article's word encoding)."""
    xp = namespace_of(indices=indices)
    check_integer("indices", indices, xp)
    check_positive_int("depth", depth)
    check_range("indices", indices, xp, 0, depth - 1, "the vocabulary")
    positions = xp.arange(depth, device=device_of(indices))
    return xp.astype(indices[..., None] == positions, float_dtype(xp, dtype))
