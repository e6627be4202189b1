"""NX-AI's sLSTM (the reference `xlstm` package) → `xlstm.SLSTMCell`.

NX-AI's `sLSTMLayer` computes the four gates' input pre-activations with four headwise linear maps
(`LinearHeadwiseExpand` modules igate, fgate, zgate, ogate, weight [NH, DH, I/NH] each, no bias:
head k's outputs read only head k's inputs) and hands them to its `sLSTMCell`, whose
`recurrent_kernel` is [NH, DH (input unit), 4, DH (output unit)] and `bias` [NH, 4, DH] (their
"external" layouts, which do not depend on the CUDA or vanilla backend).

The layer feeds `fgate(x)` into the cell's input-gate slot and `igate(x)` into its forget-gate
slot (`i, f, z, o = self.fgate(x), self.igate(x), ...` in their layer.py). The converter follows
the layer, not the names: our input gate gets `fgate`'s weights and our forget gate `igate`'s.
With `conv1d_kernel_size=0` the layer's cell then computes exactly our cell's outputs; with a
convolution, i and f read the convolved input instead, which an SLSTMCell alone does not model.

torch is never imported here: tensors are read through `xlstm_backends.asarray`.
"""
from __future__ import annotations

from typing import Any

from xlstm_backends import Backend, asarray, get_backend
from xlstm.checks import check_shape
from xlstm.slstm import SLSTMCell, headwise_full


def from_nxai_slstm(recurrent_kernel: Any, bias: Any, igate: Any, fgate: Any, zgate: Any, ogate: Any, *,
                    dtype: Any = None, backend: str | Backend | None = None, device: Any = None) -> SLSTMCell:
    """An SLSTMCell computing what NX-AI's sLSTMLayer computes before its group norm (without convolution).

    Pass `layer.slstm_cell.recurrent_kernel[:]` [NH, DH, 4, DH], `layer.slstm_cell.bias[:]` [NH, 4, DH] and,
    from `layer.state_dict()`, "igate.weight", "fgate.weight", "zgate.weight", "ogate.weight" [NH, DH, I/NH]
    (detached torch tensors or any backend's arrays); fgate's weights become our input gate's, igate's our
    forget gate's, as the layer wires them.
    """
    target = get_backend(backend, device)
    xp = target.xp
    kernel = asarray(recurrent_kernel, dtype=dtype, backend=target)
    if kernel.ndim != 4 or kernel.shape[2] != 4:
        raise ValueError(f"recurrent_kernel must be [num_heads, head_size, 4, head_size] (NX-AI's external layout), "
                         f"got shape {list(kernel.shape)}")
    heads, head_size = kernel.shape[0], kernel.shape[1]
    check_shape("recurrent_kernel", kernel, (heads, head_size, 4, head_size), "[NH, DH, 4, DH]")
    bias = asarray(bias, dtype=kernel.dtype, backend=target)
    check_shape("bias", bias, (heads, 4, head_size), "[NH, 4, DH]: gates i, f, z, o per head")
    gates = {"igate": igate, "fgate": fgate, "zgate": zgate, "ogate": ogate}
    gates = {name: asarray(value, dtype=kernel.dtype, backend=target) for name, value in gates.items()}
    head_inputs = gates["igate"].shape[-1] if gates["igate"].ndim == 3 else None
    for name, value in gates.items():
        check_shape(name, value, (heads, head_size, head_inputs), "[NH, DH, I/NH] (LinearHeadwiseExpand.weight)")
    units = heads * head_size
    # Their recurrent kernel R[k, input unit j, gate g, output unit d] is our recurrent_weights[k, g·DH + d, j].
    recurrent_weights = xp.reshape(xp.permute_dims(kernel, (0, 2, 3, 1)), (heads, 4 * head_size, head_size))
    gate_major_bias = xp.reshape(xp.permute_dims(bias, (1, 0, 2)), (4 * units,))  # rows i, f, z, o; heads inside
    input_weights = xp.concat([headwise_full(gates[name]) for name in ("fgate", "igate", "zgate", "ogate")], axis=0)
    weights = xp.concat([gate_major_bias[:, None], input_weights], axis=1)  # [4H, 1 + I]
    return SLSTMCell(units, heads * head_inputs, num_heads=heads, weights=weights,
                     recurrent_weights=recurrent_weights, dtype=kernel.dtype, backend=target)
