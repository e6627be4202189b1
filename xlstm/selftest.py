"""`python -m xlstm selftest`: the oracle checks, run on the user's own backend and device.

Made for the machine we never had (a GPU): each check compares numbers computed there with
numbers from outside that computation, and the table says the worst error and its bound.

- TensorFlow 1's published cell and loss values (DESIGN.md);
- the run as the backend does it (fused kernels where it has them), the generic per-step
  code on the same device, and a float64 reference on NumPy, over a grid of shapes, lengths,
  dropout, layer norm, stacks and bidirectional runs;
- every gradient kind against central differences (float64 where the device has it);
- the sLSTM and mLSTM cells: a mixed stack against float64 NumPy, the mLSTM's two forms against
  each other, their gradients against central differences (xlstm/selftest_xlstm.py);
- a short training run whose loss must fall; save → load on the device, bit for bit;
- PyTorch's `nn.LSTM` (cuDNN on a GPU) and ONNX Runtime (an exported file) when installed.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Callable, NamedTuple

import xlstm
from xlstm_backends import get_backend, onnx_runtime, torch_reference
from xlstm.selftest_xlstm import xlstm_checks

TENSORFLOW_CELL_H = [0.64121795, 0.68166804]  # LayerNormBasicLSTMCell, all weights 0.5 (DESIGN.md)
TENSORFLOW_CELL_C = [0.88477188, 0.98103917]
TENSORFLOW_LOGITS = [[2.0, -5.0, 0.5, -0.1], [0.0, 0.0, 1.9, 1.4], [-100.0, 100.0, -100.0, -100.0]]
TENSORFLOW_LOSSES = [0.29750752, 1.1448325, 0.0]  # sparse_softmax_cross_entropy_with_logits, labels 0, 3, 1
BOUND = {"float32": 1e-4, "float64": 1e-10}  # relative, over a whole sequence


class Check(NamedTuple):
    """One row of the table: the worst error seen against its bound (`note` when skipped)."""

    name: str
    error: float
    bound: float
    note: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.note) or self.error <= self.bound  # a NaN error fails


class Case(NamedTuple):
    """One point of the comparison grid."""

    batch: int
    steps: int
    input_size: int
    units: int
    lengths: list[int] | None
    keep: float
    layer_norm: bool
    structure: str  # "cell", "stacked" or "bidirectional"


def grid(quick: bool) -> list[Case]:
    """The shapes and settings compared: every setting at least once; `quick` keeps a few."""
    cases = [Case(3, 6, 4, 5, lengths, keep, norm, "cell")
             for lengths in (None, [6, 2, 0]) for keep in (1.0, 0.7) for norm in (False, True)]
    cases += [Case(2, 5, 3, 4, [5, 3], 1.0, norm, structure)
              for structure in ("stacked", "bidirectional") for norm in (False, True)]
    cases.append(Case(4, 40, 16, 64, None, 1.0, False, "cell"))  # big enough for several GPU blocks
    return [cases[0], cases[3], cases[8], cases[11]] if quick else cases


def _host64(x: Any) -> Any:
    """x as float64 on the NumPy backend, where every comparison is made."""
    return xlstm.asarray(x, dtype="float64", backend="numpy")


def worst_error(found: Any, wanted: Any) -> float:
    """max |found − wanted| / max(1, |wanted|) over all elements (0 for empty arrays)."""
    xp = get_backend("numpy").xp
    found, wanted = _host64(found), _host64(wanted)
    if found.shape != wanted.shape:
        return float("inf")
    if not found.size:
        return 0.0
    return float(xp.max(xp.abs(found - wanted) / xp.maximum(xp.abs(wanted), xp.ones_like(wanted))))


def _published_values(backend: Any) -> list[Check]:
    """TensorFlow 1's published cell step and losses, float32 as published."""
    cell = xlstm.LSTMCell(2, 3, initializer=0.5, bias_initializer=0.5, dtype="float32", backend=backend)
    on = lambda values: xlstm.asarray(values, dtype="float32", backend=backend)  # noqa: E731
    _, state = cell(on([[1.0, 1.0, 1.0]]), xlstm.LSTMState(on([[0.0, 0.1]]), on([[0.2, 0.3]])))
    cell_error = max(worst_error(state.h, [TENSORFLOW_CELL_H]), worst_error(state.c, [TENSORFLOW_CELL_C]))
    labels = xlstm.asarray([0, 3, 1], backend=backend)
    losses = xlstm.softmax_cross_entropy(on(TENSORFLOW_LOGITS), labels, reduction="none")
    return [Check("TensorFlow published cell step (float32)", cell_error, 1e-6),
            Check("TensorFlow published cross-entropy (float32)", worst_error(losses, TENSORFLOW_LOSSES), 1e-6)]


def _cells(case: Case, backend: Any, dtype: str, count: int) -> list[xlstm.LSTMCell]:
    """`count` seeded cells of the case (layer-norm gains and shifts away from 1 and 0)."""
    cells = []
    for k in range(count):
        size = case.input_size if k == 0 or case.structure == "bidirectional" else case.units
        extra = {"norm_gain": 1.3, "norm_shift": -0.2} if case.layer_norm else {}
        cells.append(xlstm.LSTMCell(case.units, size, layer_norm=case.layer_norm, dropout_keep_prob=case.keep,
                                    forget_bias=0.7, seed=11 + k, dtype=dtype, backend=backend, **extra))
    return cells


def _generic_run(cell: xlstm.LSTMCell, inputs: Any, lengths: list[int] | None, masks: Any) -> Any:
    """The generic per-step code (`LSTMCell.step`), never a fused kernel: outputs [B, T, H]."""
    xp = cell.backend.xp
    batch, steps = inputs.shape[0], inputs.shape[1]
    state = cell.zero_state(batch)
    outputs = []
    for t in range(steps):
        values = cell.step(inputs[:, t, :], state, None if masks is None else masks[t, ...])
        if lengths is None:
            state, output = xlstm.LSTMState(values.c, values.h), values.h
        else:
            valid = xlstm.asarray([[t < n] for n in lengths], backend=cell.backend)
            state = xlstm.LSTMState(xp.where(valid, values.c, state.c), xp.where(valid, values.h, state.h))
            output = xp.where(valid, values.h, xp.zeros_like(values.h))
        outputs.append(output)
    return xp.stack(outputs, axis=1)


def _run(case: Case, cells: list[xlstm.LSTMCell], inputs: Any) -> Any:
    """The case's forward as the library runs it (fused kernels where the backend has them)."""
    if case.structure == "stacked":
        return xlstm.dynamic_rnn(xlstm.MultiRNNCell(cells), inputs, sequence_length=case.lengths)[0]
    if case.structure == "bidirectional":
        (forward, backward), _ = xlstm.bidirectional_dynamic_rnn(cells[0], cells[1], inputs,
                                                                  sequence_length=case.lengths)
        return cells[0].backend.xp.concat([forward, backward], axis=2)
    return xlstm.dynamic_rnn(cells[0], inputs, sequence_length=case.lengths)[0]


def _compare_grid(backend: Any, dtypes: list[str], quick: bool) -> list[Check]:
    """Library run and generic code on the device vs float64 on NumPy, per dtype."""
    reference_backend = get_backend("numpy")
    worst = {(dtype, kind): 0.0 for dtype in dtypes for kind in ("library", "generic")}
    for number, case in enumerate(grid(quick)):
        host_inputs = reference_backend.random(number, stream=3).normal(
            (case.batch, case.steps, case.input_size), reference_backend.resolve_dtype("float64"))
        count = 1 if case.structure == "cell" else 2
        reference_cells = _cells(case, reference_backend, "float64", count)
        for dtype in dtypes:
            cells = [cell.to(backend, dtype=dtype) for cell in reference_cells]
            inputs = xlstm.asarray(host_inputs, dtype=dtype, backend=backend)
            masks = None
            if case.keep < 1.0:  # the library's own masks, drawn again below from the same stream position
                position = cells[0].random_state()
                masks = cells[0].dropout_masks((case.steps, case.batch, case.units))
                cells[0].set_random_state(position)
            found = _run(case, cells, inputs)
            reference = (_generic_run(reference_cells[0], host_inputs, case.lengths, None if masks is None else _host64(masks))
                         if count == 1 else _run(case, reference_cells, host_inputs))
            worst[dtype, "library"] = max(worst[dtype, "library"], worst_error(found, reference))
            if count == 1:
                generic = _generic_run(cells[0], inputs, case.lengths, masks)
                worst[dtype, "generic"] = max(worst[dtype, "generic"], worst_error(generic, reference))
    return [Check(f"{'library run (fused kernels)' if kind == 'library' else 'generic per-step code'} "
                  f"vs float64 NumPy ({dtype})", error, BOUND[dtype])
            for (dtype, kind), error in worst.items()]


def _central_difference_error(loss: Callable[[dict], float], params: dict[str, Any], grads: dict[str, Any],
                              step: float, xp: Any) -> float:
    """Worst relative gap between `grads` and central differences of `loss` at three entries of each array."""
    worst, host_xp = 0.0, get_backend("numpy").xp
    for name, value in params.items():
        flat = xp.reshape(value, (-1,))
        analytic = host_xp.reshape(_host64(grads[name]), (-1,))
        for k in sorted({0, flat.shape[0] // 2, flat.shape[0] - 1}):
            delta = xp.zeros_like(flat)
            delta[k] = step
            shifted = [{**params, name: xp.reshape(flat + sign * delta, value.shape)} for sign in (1.0, -1.0)]
            numeric = (loss(shifted[0]) - loss(shifted[1])) / (2 * step)
            worst = max(worst, abs(numeric - float(analytic[k])) / max(1.0, abs(numeric)))
    return worst


def _gradient_checks(backend: Any, dtype: str) -> list[Check]:
    """dynamic_rnn_vjp (lengths, dropout, initial state) and CharLM (layer norm, stack, dense,
    loss, embedding) against central differences."""
    step, bound = (1e-6, 1e-6) if dtype == "float64" else (1e-2, 5e-2)
    xp = backend.xp
    stream = backend.random(5, stream=4)
    normal = lambda *shape: stream.normal(shape, backend.resolve_dtype(dtype))  # noqa: E731
    lengths = [4, 2, 0]
    weights, inputs, c0, h0 = normal(16, 1 + 3 + 4), normal(3, 4, 3), normal(3, 4), normal(3, 4)
    d_outputs, d_c, d_h = normal(3, 4, 4), normal(3, 4), normal(3, 4)

    def run(params: dict[str, Any], with_backward: bool = False) -> Any:
        cell = xlstm.LSTMCell(4, 3, weights=params["weights"], dropout_keep_prob=0.7, forget_bias=0.7, seed=9,
                              backend=backend)  # a fresh cell per call: the same dropout masks every time
        state = xlstm.LSTMState(params["c0"], params["h0"])
        if with_backward:
            return xlstm.dynamic_rnn_vjp(cell, params["inputs"], state, sequence_length=lengths)
        outputs, final = xlstm.dynamic_rnn(cell, params["inputs"], state, sequence_length=lengths)
        return float(xp.sum(outputs * d_outputs) + xp.sum(final.c * d_c) + xp.sum(final.h * d_h))

    params = {"weights": weights, "inputs": inputs, "c0": c0, "h0": h0}
    _, _, backward = run(params, with_backward=True)
    grads = backward(d_outputs, xlstm.LSTMState(d_c, d_h))
    grads.update(c0=grads["initial_state"].c, h0=grads["initial_state"].h)
    rnn_error = _central_difference_error(run, params, grads, step, xp)

    model = xlstm.models.CharLM(5, embedding_size=3, hidden_size=4, num_layers=2, layer_norm=True, seed=3,
                                dtype=dtype, backend=backend)
    tokens = xlstm.asarray([[1, 2, 3, 4, 0], [4, 3, 2, 1, 0]], backend=backend)
    ids, targets = tokens[:, :-1], tokens[:, 1:]

    def model_loss(params: dict[str, Any]) -> float:
        model.set_parameters(params)
        return float(model.loss(ids, targets)[0])

    start = model.parameters()
    model_grads = model.loss_and_grads(ids, targets).grads
    model_error = _central_difference_error(model_loss, start, model_grads, step, xp)
    model.set_parameters(start)
    return [Check(f"gradients: dynamic_rnn_vjp vs central differences ({dtype})", rnn_error, bound),
            Check(f"gradients: CharLM, layer norm, stack vs central differences ({dtype})", model_error, bound)]


def _train_and_reload(backend: Any) -> list[Check]:
    """A short training run must bring the loss well down; the model saved and loaded on the
    device must give the same loss bit for bit."""
    model = xlstm.models.CharLM(4, embedding_size=8, hidden_size=16, num_layers=1, seed=1, backend=backend)
    tokens = xlstm.asarray([[k % 4 for k in range(start, start + 9)] for start in range(4)], backend=backend)
    ids, targets = tokens[:, :-1], tokens[:, 1:]
    optimizer = xlstm.optim.Adam(0.05)
    first = float(model.loss(ids, targets)[0])
    for _ in range(40):
        model.set_parameters(optimizer.step(model.parameters(), model.loss_and_grads(ids, targets).grads))
    last = float(model.loss(ids, targets)[0])
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.npz")
        xlstm.save(model, path)
        loaded = xlstm.load(path, backend=backend.name, device=backend.device)
    reloaded = float(loaded.loss(ids, targets)[0])
    return [Check("training: final loss / first loss (40 Adam steps)", last / first, 0.2),
            Check("save → load on this device: loss difference", abs(reloaded - last), 0.0)]


def _pytorch_parity(backend: Any, dtype: str) -> list[Check]:
    """A two-layer stack against PyTorch's nn.LSTM on the matching torch device (cuDNN on a GPU)."""
    name = f"PyTorch nn.LSTM, 2 layers ({dtype})"
    reason = torch_reference.unavailable_reason()
    if reason is not None:
        return [Check(name, 0.0, 0.0, note=f"skipped: {reason}")]
    stack = xlstm.MultiRNNCell([xlstm.LSTMCell(6, 3, seed=1, dtype=dtype, backend=backend),
                                xlstm.LSTMCell(6, 6, seed=2, dtype=dtype, backend=backend)])
    inputs = backend.random(6, stream=5).normal((2, 7, 3), backend.resolve_dtype(dtype))
    outputs, _ = xlstm.dynamic_rnn(stack, inputs)
    device = torch_reference.reference_device(backend.name, backend.device)
    theirs, reason = torch_reference.lstm_outputs(xlstm.convert.to_pytorch(stack), _host64(inputs), device, dtype)
    if theirs is None:
        return [Check(name, 0.0, 0.0, note=f"skipped: {reason}")]
    return [Check(name, worst_error(outputs, theirs), BOUND[dtype])]


def _onnx_runtime_parity(backend: Any) -> list[Check]:
    """A bidirectional layer with sequence lengths, exported to ONNX and run by ONNX Runtime (float32)."""
    name = "ONNX Runtime, exported bidirectional layer (float32)"
    model = xlstm.LSTM([xlstm.Bidirectional(xlstm.LSTMCell(4, 3, seed=21, backend=backend),
                                            xlstm.LSTMCell(4, 3, seed=22, backend=backend, forget_bias=0.0))])
    inputs = backend.random(8, stream=6).normal((3, 5, 3), backend.resolve_dtype("float32"))
    lengths = [5, 0, 2]
    outputs, _ = model(inputs, sequence_length=lengths)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        try:
            xlstm.export_onnx(model, path, sequence_length=True)
        except ImportError as error:  # the onnx package writes the file
            return [Check(name, 0.0, 0.0, note=f"skipped: {error}")]
        theirs, reason = onnx_runtime.run_onnx_file(path, {"inputs": xlstm.to_numpy(inputs), "sequence_length": lengths})
    if theirs is None:
        return [Check(name, 0.0, 0.0, note=f"skipped: {reason}")]
    return [Check(name, worst_error(outputs, theirs["outputs"]), 1e-5)]


def _has_float64(backend: Any) -> bool:
    """Whether the device computes in float64 (some GPUs' torch backends do not)."""
    try:
        xlstm.asarray([1.0], dtype="float64", backend=backend) + 1.0
    except (TypeError, RuntimeError, ValueError):
        return False
    return True


def run_selftest(backend: str | None = None, device: Any = None, quick: bool = False) -> list[Check]:
    """Every check on `backend`/`device` (the current backend by default); `quick` trims the grid."""
    chosen = get_backend(backend, device)
    dtypes = ["float32", "float64"] if _has_float64(chosen) else ["float32"]
    checks = _published_values(chosen) + _compare_grid(chosen, dtypes, quick)
    checks += _gradient_checks(chosen, dtypes[-1]) + _train_and_reload(chosen)
    for dtype in dtypes:
        checks += xlstm_checks(chosen, dtype, Check, worst_error, BOUND, _central_difference_error)
    return checks + _pytorch_parity(chosen, dtypes[-1]) + _onnx_runtime_parity(chosen)


def report(checks: list[Check], write: Callable[[str], Any] = print) -> int:
    """Print the table; 0 when every check passed, else 1 after naming the failures."""
    width = max(len(check.name) for check in checks)
    write(f"{'check':<{width}}  {'worst error':>11}  {'bound':>8}  result")
    for check in checks:
        result = check.note or ("pass" if check.passed else "FAIL")
        write(f"{check.name:<{width}}  {check.error:>11.2e}  {check.bound:>8.1e}  {result}")
    failed = [check.name for check in checks if not check.passed]
    if failed:
        write(f"selftest FAILED {len(failed)} of {len(checks)} checks: " + "; ".join(failed))
        return 1
    write(f"selftest passed all {len(checks)} checks")
    return 0


def selftest_main(backend: str | None = None, device: Any = None, quick: bool = False,
                  write: Callable[[str], Any] = print) -> int:
    """`python -m xlstm selftest`: run, print the table with the time taken, return the exit code."""
    chosen = get_backend(backend, device)
    write(f"xlstm {xlstm.__version__} selftest on {chosen.name} ({chosen.device})"
          + (f", {torch_reference.accelerator_name(chosen.name, chosen.device)}"
             if torch_reference.accelerator_name(chosen.name, chosen.device) else ""))
    start = time.perf_counter()
    checks = run_selftest(chosen.name, chosen.device, quick)
    code = report(checks, write)
    write(f"({time.perf_counter() - start:.1f} s)")
    return code
