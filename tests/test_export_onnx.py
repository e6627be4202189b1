"""xlstm.export_onnx: the written file, run by ONNX Runtime, computes what xlstm computes (float32, 1e-5)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import xlstm

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx_oracle import run_model  # noqa: E402

B, T, I = 4, 6, 3
LENGTHS = [6, 0, 2, 5]  # unsorted, one empty row, one full row
ATOL = 1e-5  # ORT runs in float32


def cell(units, input_size, seed, backend=None, **options):
    return xlstm.LSTMCell(units, input_size, seed=seed, bias_initializer=xlstm.init.uniform(-0.5, 0.5),
                          backend=backend, **options)


def stack(*states):
    """LSTMStates → (h, c) each [len(states), B, H]: one ONNX operator's final states."""
    return (np.stack([xlstm.to_numpy(s.h) for s in states]), np.stack([xlstm.to_numpy(s.c) for s in states]))


# name → (model built on a backend, xlstm's final states → each LSTM operator's (h, c) in graph order)
CASES = {
    "cell": (lambda be: cell(5, I, 1, be, forget_bias=1.0), lambda f: [stack(f)]),
    "stack": (lambda be: xlstm.MultiRNNCell([cell(5, I, 2, be), cell(4, 5, 3, be, forget_bias=-0.5)]),
              lambda f: [stack(f[0]), stack(f[1])]),
    "reversed": (lambda be: xlstm.Reversed(cell(5, I, 4, be)), lambda f: [stack(f)]),
    "reversed-stack": (lambda be: xlstm.Reversed(xlstm.MultiRNNCell([cell(5, I, 5, be), cell(2, 5, 6, be)])),
                       lambda f: [stack(f[0]), stack(f[1])]),
    "bidirectional": (lambda be: xlstm.Bidirectional(cell(4, I, 7, be), cell(4, I, 8, be, forget_bias=0.0)),
                      lambda f: [stack(f[0], f[1])]),
    "bidirectional-stacks": (
        lambda be: xlstm.Bidirectional(xlstm.MultiRNNCell([cell(4, I, 9, be), cell(3, 4, 10, be)]), cell(2, I, 11, be)),
        lambda f: [stack(f[0][0]), stack(f[0][1]), stack(f[1])]),
    "model": (lambda be: xlstm.LSTM([xlstm.Bidirectional(cell(4, I, 12, be), cell(4, I, 13, be)), cell(3, 8, 14, be)]),
              lambda f: [stack(*f[0]), stack(f[1])]),
}


def run_xlstm(model, dense, x, lengths, backend):
    """xlstm's outputs, logits (or None) and each operator's final (h, c), as NumPy."""
    seq = None if lengths is None else xlstm.asarray(np.asarray(lengths, np.int32), backend=backend)
    whole = model if isinstance(model, xlstm.LSTM) else xlstm.LSTM([model])
    outputs, finals = whole(xlstm.asarray(x, backend=backend), sequence_length=seq)
    finals = finals if whole is model else finals[0]
    logits = None if dense is None else xlstm.to_numpy(dense(outputs))
    return xlstm.to_numpy(outputs), logits, finals


def check_export(tmp_path, name, backend, *, with_dense, lengths):
    build, operator_states = CASES[name]
    model = build(backend)
    dense = xlstm.Dense(7, model.output_size, seed=20, bias_initializer=0.3, backend=backend) if with_dense else None
    path = tmp_path / f"{name}.onnx"
    xlstm.export_onnx(model, path, dense, sequence_length=lengths is not None)

    x = np.random.default_rng(0).normal(size=(B, T, I)).astype(np.float32)
    feeds = {"inputs": x} if lengths is None else {"inputs": x, "sequence_length": np.asarray(lengths, np.int32)}
    got = run_model(path, feeds)
    outputs, logits, finals = run_xlstm(model, dense, x, lengths, backend)
    expected_states = operator_states(finals)
    names = ["outputs"] + (["logits"] if with_dense else []) + [
        f"final_{part}_{k}" for k in range(len(expected_states)) for part in "hc"]
    assert list(got) == names
    np.testing.assert_allclose(got["outputs"], outputs, atol=ATOL, rtol=0, err_msg="outputs")
    if with_dense:
        np.testing.assert_allclose(got["logits"], logits, atol=ATOL, rtol=0, err_msg="logits")
    for k, (h, c) in enumerate(expected_states):
        np.testing.assert_allclose(got[f"final_h_{k}"], h, atol=ATOL, rtol=0, err_msg=f"final_h_{k}")
        np.testing.assert_allclose(got[f"final_c_{k}"], c, atol=ATOL, rtol=0, err_msg=f"final_c_{k}")


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("name", list(CASES))
def test_export_matches_onnx_runtime(tmp_path, name, lengths):
    check_export(tmp_path, name, xlstm.current_backend(), with_dense=name in ("cell", "model"), lengths=lengths)


def test_export_from_every_backend(tmp_path, backend):
    check_export(tmp_path, "model", backend, with_dense=True, lengths=LENGTHS)


def test_float64_model_exports_float32_by_default_and_float64_on_request(tmp_path):
    model = xlstm.MultiRNNCell([cell(3, I, 1, dtype="float64"), cell(2, 3, 2, dtype="float64")])
    xlstm.export_onnx(model, tmp_path / "f32.onnx")
    x = np.random.default_rng(1).normal(size=(B, T, I))
    got = run_model(tmp_path / "f32.onnx", {"inputs": x.astype(np.float32)})
    np.testing.assert_allclose(got["outputs"], xlstm.to_numpy(xlstm.dynamic_rnn(model, x)[0]), atol=ATOL, rtol=0)

    xlstm.export_onnx(model, tmp_path / "f64.onnx", dtype="float64")  # valid ONNX that ORT cannot run
    proto = onnx.load(tmp_path / "f64.onnx")
    onnx.checker.check_model(proto, full_check=True)
    double = onnx.TensorProto.DOUBLE
    assert proto.graph.input[0].type.tensor_type.elem_type == double
    assert {t.data_type for t in proto.graph.initializer if t.name.startswith("lstm_")} == {double}


# ----------------------------------------------------------------------------------------
# Refusals: each raised before anything is written, so a file already at `path` stays whole.

@pytest.fixture
def existing(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"an earlier file")
    yield path
    assert path.read_bytes() == b"an earlier file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary left behind


@pytest.mark.parametrize("model, options, error, match", [
    (lambda: cell(3, I, 1, layer_norm=True), {}, ValueError, "layer normalisation"),
    (lambda: xlstm.LSTM([cell(3, I, 1), cell(3, 3, 2, layer_norm=True)]), {}, ValueError, "layer normalisation"),
    (lambda: xlstm.Dense(3, I), {}, TypeError, "cell_or_model must be"),
    (lambda: cell(3, I, 1), {"dense": xlstm.Dense(2, 4)}, ValueError, "dense.input_size must equal"),
    (lambda: cell(3, I, 1), {"dtype": "float16"}, ValueError, "dtype must be one of"),
    (lambda: cell(3, I, 1), {"sequence_length": [6, 2]}, TypeError, "sequence_length must be True or False"),
], ids=["layer-norm", "layer-norm-inside", "unsupported", "dense-size", "dtype", "sequence_length"])
def test_refusals_leave_the_file_untouched(existing, model, options, error, match):
    with pytest.raises(error, match=match):
        xlstm.export_onnx(model(), existing, **options)


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="path's folder"):
        xlstm.export_onnx(cell(3, I, 1), tmp_path / "missing" / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_without_onnx_the_error_says_what_to_install(existing, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'xlstm-array\[onnx\]'"):
        xlstm.export_onnx(cell(3, I, 1), existing)
