"""`Dense`: the output projection y = x @ kernel + bias (the article's h·Wy + by)."""
from __future__ import annotations

import math
from typing import Any, Callable

from xlstm_backends import Backend, asarray, dtype_name, get_backend
from xlstm import init
from xlstm.checks import check_float, check_positive_int, check_shape, device_of, namespace_of


class Dense:
    """A fully connected layer with kernel [in, units] and bias [units] (TensorFlow's layout)."""

    def __init__(
        self,
        units: int,
        input_size: int,
        *,
        kernel: Any = None,
        bias: Any = None,
        initializer: Any = None,
        bias_initializer: Any = 0.0,
        dtype: Any = None,
        seed: int | None = None,
        backend: str | Backend | None = None,
        device: Any = None,
    ) -> None:
        self.units = check_positive_int("units", units)
        self.input_size = check_positive_int("input_size", input_size)
        self.seed = seed
        self.backend = get_backend(backend, device)
        given = kernel if kernel is not None else bias
        default_dtype = dtype_name(given.dtype) if hasattr(given, "dtype") else "float32"
        self.dtype = self.backend.resolve_dtype(dtype, "float64" if default_dtype == "float64" else "float32")
        stream = self.backend.random(seed, stream=0)
        self.kernel = self._parameter("kernel", kernel, (input_size, units),
                                      init.resolve("initializer", initializer, init.glorot_uniform()), stream)
        self.bias = self._parameter("bias", bias, (units,),
                                    init.resolve("bias_initializer", bias_initializer, init.constant(0.0)), stream)

    def _parameter(self, name: str, given: Any, shape: tuple[int, ...], initializer: init.Initializer,
                   stream: Any) -> Any:
        if given is None:
            return initializer(shape, self.dtype, stream)
        array = asarray(given, dtype=self.dtype, backend=self.backend)
        check_shape(name, array, shape)
        return array

    def __call__(self, x: Any) -> Any:
        """x [..., in] → x @ kernel + bias, [..., units]."""
        return self.vjp(x)[0]

    def vjp(self, x: Any) -> tuple[Any, Callable[[Any], dict[str, Any]]]:
        """y = self(x) and `backward(dy)` → {"kernel", "bias", "inputs"} gradients."""
        xp = self._check_inputs(x)
        # One 2-D product over all rows: a stack of [T, in] products (x is often a transposed
        # view, e.g. batch-major outputs of a time-major loop) is several times slower.
        rows = math.prod(x.shape[:-1])
        flat_x = xp.reshape(x, (rows, self.input_size))
        flat_y = flat_x @ self.kernel
        flat_y += self.bias  # in place on the product made here: one array, not two
        y = xp.reshape(flat_y, (*x.shape[:-1], self.units))

        def backward(dy: Any) -> dict[str, Any]:
            namespace_of(dy=dy, y=y)
            check_shape("dy", dy, tuple(y.shape), "like the layer's output")
            flat_dy = xp.reshape(dy, (rows, self.units))
            return {"kernel": xp.matrix_transpose(flat_x) @ flat_dy, "bias": xp.sum(flat_dy, axis=0),
                    "inputs": xp.reshape(flat_dy @ xp.matrix_transpose(self.kernel), tuple(x.shape))}

        return y, backward

    def _check_inputs(self, x: Any) -> Any:
        xp = namespace_of(x=x, kernel=self.kernel)
        check_float("x", x, xp, self.dtype)
        if x.ndim < 1 or x.shape[-1] != self.input_size:
            raise ValueError(f"x must have its last axis equal to the layer's input_size {self.input_size}, "
                             f"got shape {list(x.shape)}")
        return xp

    def parameters(self) -> dict[str, Any]:
        """The trainable arrays, keyed like the gradients of `vjp`."""
        return {"kernel": self.kernel, "bias": self.bias}

    def config(self) -> dict[str, Any]:
        """The constructor's settings (without arrays)."""
        return {"units": self.units, "input_size": self.input_size, "seed": self.seed}

    def to(self, backend: str | Backend, device: Any = None, dtype: Any = None) -> "Dense":
        """A copy of this layer on another backend/device (and dtype)."""
        return Dense(**self.config(), kernel=self.kernel, bias=self.bias,
                     dtype=self.dtype if dtype is None else dtype, backend=get_backend(backend, device))

    def __repr__(self) -> str:
        return (f"Dense(units={self.units}, input_size={self.input_size}, backend={self.backend.name!r}, "
                f"device={device_of(self.kernel)!r}, dtype={dtype_name(self.dtype)})")
