"""xlstm.save / xlstm.load: every class on every backend, bit-exact across backends, same
outputs and dropout masks after loading, and clear refusals of bad files and objects."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

import xlstm
from xlstm_backends import dtype_name, storage
from xlstm.checks import device_of
from xlstm.models import CharLM
from xlstm.serialization import FORMAT, VERSION, ModelFileError

BATCH, TIME, LENGTHS = 2, 3, [3, 2]


def _cell(units, inputs, dtype, backend, **settings):
    return xlstm.LSTMCell(units, inputs, dtype=dtype, backend=backend, **settings)


def _build(kind, dtype, backend):
    """A small object of class `kind` whose settings all differ from the defaults somewhere."""
    rng = np.random.default_rng(7)
    if kind == "LSTMCell":  # seed=None: only the saved random state can reproduce its masks
        return _cell(3, 2, dtype, backend, forget_bias=0.25, layer_norm=True, norm_epsilon=1e-3,
                     dropout_keep_prob=0.75, norm_gain=rng.normal(size=(5, 3)), norm_shift=rng.normal(size=(5, 3)))
    if kind == "Dense":
        return xlstm.Dense(4, 3, bias_initializer=0.5, dtype=dtype, seed=1, backend=backend)
    if kind == "MultiRNNCell":
        return xlstm.MultiRNNCell([_cell(3, 2, dtype, backend, seed=1, dropout_keep_prob=0.5),
                                   _cell(4, 3, dtype, backend, seed=2, layer_norm=True)])
    if kind == "Reversed":
        return xlstm.Reversed(_cell(3, 2, dtype, backend, seed=3, forget_bias=0.0))
    if kind == "Bidirectional":
        return xlstm.Bidirectional(_cell(3, 2, dtype, backend, seed=4),
                                   xlstm.MultiRNNCell([_cell(2, 2, dtype, backend, dropout_keep_prob=0.6)]))
    if kind == "LSTM":
        return xlstm.LSTM([xlstm.Bidirectional(_cell(3, 2, dtype, backend, seed=5), _cell(2, 2, dtype, backend)),
                           xlstm.Reversed(_cell(4, 5, dtype, backend, layer_norm=True, seed=6)),
                           xlstm.MultiRNNCell([_cell(3, 4, dtype, backend, dropout_keep_prob=0.9)]),
                           _cell(2, 3, dtype, backend, seed=8)])
    return CharLM(7, embedding_size=3, hidden_size=4, num_layers=2, layer_norm=True, dropout_keep_prob=0.8,
                  forget_bias=0.5, dtype=dtype, backend=backend)


KINDS = ["LSTMCell", "Dense", "MultiRNNCell", "Reversed", "Bidirectional", "LSTM", "CharLM"]


def _outputs(obj, backend):
    """What `obj` computes on a fixed small input (drawing dropout masks where it has dropout)."""
    rng = np.random.default_rng(11)
    if isinstance(obj, CharLM):
        ids = xlstm.asarray(rng.integers(0, 7, size=(BATCH, TIME)), backend=backend)
        loss, state = obj.loss(ids, ids)
        return [loss, *[part for layer in state for part in layer], *obj.generate([1, 2], 3, seed=5)]
    x = xlstm.asarray(rng.normal(size=(BATCH, TIME, obj.input_size)), dtype=obj.dtype, backend=backend)
    if isinstance(obj, xlstm.Dense):
        return [obj(x)]
    if isinstance(obj, (xlstm.LSTMCell, xlstm.MultiRNNCell)):
        outputs, state = xlstm.dynamic_rnn(obj, x, sequence_length=LENGTHS)
    else:
        outputs, state = obj(x, sequence_length=LENGTHS)
    return [outputs, *_leaves(state)]


def _leaves(state):
    return [state] if not isinstance(state, tuple) else [leaf for part in state for leaf in _leaves(part)]


def _tree(obj):
    """Class, configuration and dtype of `obj` and of everything it holds, read off the objects."""
    held = getattr(obj, "cells", None) or getattr(obj, "layers", None) or [
        getattr(obj, name) for name in ("cell", "cell_fw", "cell_bw") if hasattr(obj, name)]
    config = obj.config() if hasattr(obj, "config") else None
    return type(obj).__name__, config, dtype_name(obj.dtype), [_tree(child) for child in held]


def _assert_same_bits(loaded, saved):
    assert _tree(loaded) == _tree(saved)
    loaded_parameters, saved_parameters = loaded.parameters(), saved.parameters()
    assert list(loaded_parameters) == list(saved_parameters)
    for name, value in saved_parameters.items():
        expected, actual = xlstm.to_numpy(value), xlstm.to_numpy(loaded_parameters[name])
        assert actual.dtype == expected.dtype and actual.tobytes() == expected.tobytes(), name


def _assert_same_outputs(loaded, saved, backend):
    for actual, expected in zip(_outputs(loaded, backend), _outputs(saved, backend), strict=True):
        np.testing.assert_array_equal(xlstm.to_numpy(actual), xlstm.to_numpy(expected))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_keeps_bits_settings_device_outputs_and_dropout_masks(kind, dtype, backend, tmp_path):
    saved = _build(kind, dtype, backend)
    xlstm.save(saved, tmp_path / "model.npz")
    loaded = xlstm.load(tmp_path / "model.npz", backend=backend)
    assert type(loaded) is type(saved) and loaded.backend.name == backend.name
    for value in loaded.parameters().values():
        assert device_of(value) == backend.device
    _assert_same_bits(loaded, saved)
    _assert_same_outputs(loaded, saved, backend)


@pytest.mark.parametrize("kind", KINDS)
def test_file_is_a_plain_npz_of_the_parameters_and_a_header(kind, tmp_path):
    saved = _build(kind, "float64", "numpy")
    xlstm.save(saved, tmp_path / "model.npz")
    header, _ = storage.read_arrays(tmp_path / "model.npz")
    assert (header["format"], header["version"], header["object"]["class"]) == (FORMAT, VERSION, kind)
    with np.load(tmp_path / "model.npz", allow_pickle=False) as archive:
        names = set(archive.files) - {storage.HEADER_KEY}
        assert names == set(saved.parameters())
        for name in names:
            np.testing.assert_array_equal(archive[name], xlstm.to_numpy(saved.parameters()[name]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bits_survive_numpy_strict_devices_and_torch(dtype, tmp_path):
    usable = xlstm.available_backends()
    if usable["torch"] is not None:
        pytest.skip(f"torch unavailable: {usable['torch']}")
    saved = _build("LSTM", dtype, "numpy")
    xlstm.save(saved, tmp_path / "numpy.npz")
    first = xlstm.load(tmp_path / "numpy.npz", backend="array_api_strict")
    on_device1 = xlstm.load(tmp_path / "numpy.npz", backend="array_api_strict", device="device1")
    assert device_of(on_device1.parameters()["layer_3/weights"]) == on_device1.backend.device != first.backend.device
    xlstm.save(on_device1, tmp_path / "strict.npz")
    on_torch = xlstm.load(tmp_path / "strict.npz", backend="torch")
    for loaded in (first, on_device1, on_torch):
        _assert_same_bits(loaded, saved)
    (header, arrays), (header_again, arrays_again) = map(storage.read_arrays, [tmp_path / "numpy.npz",
                                                                               tmp_path / "strict.npz"])
    assert header == header_again and {k: v.tobytes() for k, v in arrays.items()} == {
        k: v.tobytes() for k, v in arrays_again.items()}


def test_load_defaults_to_the_current_backend(tmp_path):
    xlstm.save(_build("Dense", "float32", "numpy"), tmp_path / "dense.npz")
    with xlstm.use_backend("array_api_strict", device="device1"):
        loaded = xlstm.load(tmp_path / "dense.npz")
    assert loaded.backend.name == "array_api_strict" and device_of(loaded.kernel) == loaded.backend.device


def test_unsupported_object_is_refused_before_the_file_is_touched(tmp_path):
    path = tmp_path / "model.npz"
    xlstm.save(_build("Dense", "float32", "numpy"), path)
    before = path.read_bytes()
    for unsupported in (object(), [xlstm.Dense(2, 2)], {"weights": np.zeros(3)}):
        with pytest.raises(TypeError, match="obj must be one of LSTMCell, .*Dense, CharLM, .*MultiRNNCell, .* got"):
            xlstm.save(unsupported, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.npz"]


def test_crash_mid_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    xlstm.save(_build("Dense", "float32", "numpy"), path)
    before = path.read_bytes()

    def crash(file, **arrays):
        file.write(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(storage.numpy, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        xlstm.save(_build("LSTM", "float32", "numpy"), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.npz"]


@pytest.fixture
def saved_file(tmp_path):
    path = tmp_path / "model.npz"
    xlstm.save(_build("LSTM", "float32", "numpy"), path)
    return path


def test_corrupt_truncated_and_missing_files_are_refused(saved_file, tmp_path):
    corrupt, truncated = tmp_path / "corrupt.npz", tmp_path / "truncated.npz"
    corrupt.write_bytes(np.random.default_rng(0).bytes(2000))
    data = saved_file.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    for path in (corrupt, truncated):
        with pytest.raises(ModelFileError, match=f"{path.name} is corrupt or truncated"):
            xlstm.load(path)
    with pytest.raises(ModelFileError, match="missing.npz does not exist"):
        xlstm.load(tmp_path / "missing.npz")


def test_newer_version_says_to_upgrade(saved_file):
    header, arrays = storage.read_arrays(saved_file)
    storage.write_arrays(saved_file, {**header, "version": VERSION + 1}, arrays)
    with pytest.raises(ModelFileError, match=f"model.npz has format version {VERSION + 1}; .*upgrade xlstm"):
        xlstm.load(saved_file)


def test_foreign_files_are_refused(tmp_path):
    np.savez(tmp_path / "plain.npz", weights=np.zeros((4, 4)))
    with pytest.raises(ModelFileError, match="plain.npz is not an xlstm file"):
        xlstm.load(tmp_path / "plain.npz")
    storage.write_arrays(tmp_path / "other.npz", {"format": "xlstm-charlm-checkpoint", "version": 1}, {})
    with pytest.raises(ModelFileError, match="other.npz is not an xlstm model file .*'xlstm-charlm-checkpoint'"):
        xlstm.load(tmp_path / "other.npz")


def test_missing_wrong_shape_and_stray_arrays_are_named(saved_file):
    header, arrays = storage.read_arrays(saved_file)
    cases = {
        "the array 'layer_1/norm_gain' is missing": {k: v for k, v in arrays.items() if k != "layer_1/norm_gain"},
        r"the array 'layer_0/fw/weights' is float32 of shape \[12, 5\], expected float32 of shape \[12, 6\]":
            {**arrays, "layer_0/fw/weights": arrays["layer_0/fw/weights"][:, :5]},
        "the array 'layer_3/weights' is float64 .* expected float32": {
            **arrays, "layer_3/weights": arrays["layer_3/weights"].astype(np.float64)},
        r"arrays \['stray'\] belong to no object": {**arrays, "stray": np.zeros(2)},
    }
    for message, damaged in cases.items():
        storage.write_arrays(saved_file, header, damaged)
        with pytest.raises(ModelFileError, match=f"model.npz is damaged: {message}"):
            xlstm.load(saved_file)


def test_damaged_header_is_refused(saved_file):
    header, arrays = storage.read_arrays(saved_file)
    bidirectional = header["object"]["children"][0]
    three_way = {**bidirectional, "children": bidirectional["children"] * 2}
    for damaged, message in [({**header, "object": {"class": "Conv2D"}}, "a node with a known class"),
                             ({**header, "version": "1"}, "format version '1' is not a positive integer"),
                             ({**header, "object": {**header["object"], "children": None}}, "TypeError"),
                             ({**header, "object": {**header["object"], "children": [three_way]}}, "IndexError")]:
        storage.write_arrays(saved_file, damaged, arrays)
        with pytest.raises(ModelFileError, match=f"model.npz is damaged: .*{message}"):
            xlstm.load(saved_file)


def test_saved_files_get_ordinary_permissions(tmp_path):
    """Atomic writes go through a private temporary file; the result must not stay private."""
    path = tmp_path / "cell.npz"
    umask = os.umask(0o022)
    try:
        xlstm.save(xlstm.LSTMCell(2, 3, backend="numpy"), path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        path.chmod(0o640)
        xlstm.save(xlstm.LSTMCell(2, 3, backend="numpy"), path)  # an existing file keeps its mode
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(umask)
