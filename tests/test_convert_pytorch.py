"""xlstm.convert ↔ PyTorch: torch.nn.LSTM / nn.LSTMCell are the oracle (float64 to 1e-10)."""
from __future__ import annotations

import numpy as np
import pytest

import xlstm
from xlstm.convert import from_pytorch, from_pytorch_state, to_pytorch, to_pytorch_state

torch = pytest.importorskip("torch")

B, T, I, H = 3, 6, 4, 5
LENGTHS = [6, 2, 4]


def _torch_run(module, x, h0, c0, lengths=None):
    """PyTorch's outputs [B, T, D·H] and (h_n, c_n); packed sequences when lengths are given."""
    with torch.no_grad():
        if lengths is None:
            out, (h, c) = module(x, (h0, c0))
            return out.numpy(), h.numpy(), c.numpy()
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, (h, c) = module(packed, (h0, c0))
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out.numpy(), h.numpy(), c.numpy()


@pytest.mark.parametrize("layers, bidirectional, lengths", [
    (1, False, None), (2, False, LENGTHS), (3, False, None),
    (1, True, LENGTHS), (2, True, None), (3, True, LENGTHS)])
def test_from_pytorch_lstm_matches_torch(backend, layers, bidirectional, lengths):
    torch.manual_seed(layers + 10 * bidirectional)
    module = torch.nn.LSTM(I, H, num_layers=layers, bidirectional=bidirectional, batch_first=True).double()
    directions = 2 if bidirectional else 1
    x = torch.randn(B, T, I, dtype=torch.float64)
    h0, c0 = (torch.randn(layers * directions, B, H, dtype=torch.float64) for _ in range(2))
    expected_out, expected_h, expected_c = _torch_run(module, x, h0, c0, lengths)

    model = from_pytorch(module, backend=backend)
    assert isinstance(model, xlstm.LSTM) and len(model.layers) == layers
    on = lambda a: xlstm.asarray(a.numpy(), backend=backend)  # noqa: E731
    outputs, finals = model(on(x), from_pytorch_state(model, on(h0), on(c0)), sequence_length=lengths)
    h, c = to_pytorch_state(finals)
    for name, actual, expected in [("outputs", outputs, expected_out), ("h_n", h, expected_h), ("c_n", c, expected_c)]:
        np.testing.assert_allclose(xlstm.to_numpy(actual), expected, atol=1e-10, rtol=0, err_msg=name)


def test_time_major_inputs_match_torch_default_layout(backend):
    torch.manual_seed(1)
    module = torch.nn.LSTM(I, H, num_layers=2).double()  # batch_first=False: [T, B, I]
    x = torch.randn(T, B, I, dtype=torch.float64)
    with torch.no_grad():
        expected, _ = module(x)
    outputs, _ = from_pytorch(module.state_dict(), backend=backend)(xlstm.asarray(x.numpy(), backend=backend),
                                                                    time_major=True)
    np.testing.assert_allclose(xlstm.to_numpy(outputs), expected.numpy(), atol=1e-10, rtol=0)


def test_lstm_cell_and_no_bias(backend):
    torch.manual_seed(2)
    module = torch.nn.LSTMCell(I, H).double()
    x, h0, c0 = (torch.randn(B, n, dtype=torch.float64) for n in (I, H, H))
    with torch.no_grad():
        h, c = module(x, (h0, c0))
    cell = from_pytorch(module, backend=backend)
    assert isinstance(cell, xlstm.LSTMCell) and cell.forget_bias == 0.0
    on = lambda a: xlstm.asarray(a.numpy(), backend=backend)  # noqa: E731
    out, state = cell(on(x), xlstm.LSTMState(on(c0), on(h0)))
    np.testing.assert_allclose(xlstm.to_numpy(out), h.numpy(), atol=1e-12)
    np.testing.assert_allclose(xlstm.to_numpy(state.c), c.numpy(), atol=1e-12)

    unbiased = torch.nn.LSTM(I, H, bias=False, batch_first=True).double()
    xs = torch.randn(B, T, I, dtype=torch.float64)
    with torch.no_grad():
        expected, _ = unbiased(xs)
    outputs, _ = from_pytorch(unbiased, backend=backend)(xlstm.asarray(xs.numpy(), backend=backend))
    np.testing.assert_allclose(xlstm.to_numpy(outputs), expected.numpy(), atol=1e-10, rtol=0)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_to_pytorch_folds_the_forget_bias_and_loads(backend, bidirectional):
    """xlstm cells with forget_bias 1.0 → a state dict torch loads and runs to the same outputs."""
    cells = [xlstm.LSTMCell(H, I, forget_bias=1.0, seed=s, dtype="float64", backend=backend) for s in (1, 2)]
    upper = [xlstm.LSTMCell(H, 2 * H if bidirectional else H, forget_bias=1.0, seed=s, dtype="float64",
                            backend=backend) for s in (3, 4)]
    layers = [xlstm.Bidirectional(*cells), xlstm.Bidirectional(*upper)] if bidirectional else [cells[0], upper[0]]
    model = xlstm.LSTM(layers)
    x = np.random.default_rng(5).normal(size=(B, T, I))
    outputs, _ = model(xlstm.asarray(x, backend=backend))

    module = torch.nn.LSTM(I, H, num_layers=2, bidirectional=bidirectional, batch_first=True).double()
    module.load_state_dict(to_pytorch(model))
    with torch.no_grad():
        expected, _ = module(torch.from_numpy(x))
    np.testing.assert_allclose(xlstm.to_numpy(outputs), expected.numpy(), atol=1e-10, rtol=0)


def test_round_trip_is_exact():
    torch.manual_seed(3)
    module = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True)
    model = from_pytorch(module)
    x = torch.randn(B, T, I)
    with torch.no_grad():
        expected, _ = module(x)
    outputs, _ = model(xlstm.asarray(x.numpy()))  # the way there is right, not only there and back
    np.testing.assert_allclose(xlstm.to_numpy(outputs), expected.numpy(), atol=1e-5, rtol=0)
    state = to_pytorch(model)
    for key, value in module.state_dict().items():
        if key.startswith("bias_ih"):
            value = value + module.state_dict()[key.replace("bias_ih", "bias_hh")]
        elif key.startswith("bias_hh"):
            value = torch.zeros_like(value)
        assert state[key].dtype == torch.float32
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    cell = torch.nn.LSTMCell(I, H)
    cell_state = to_pytorch(from_pytorch(cell), for_lstm_cell=True)
    torch.nn.LSTMCell(I, H).load_state_dict(cell_state)


def test_refusals_say_why():
    with pytest.raises(ValueError, match="proj_size"):
        from_pytorch(torch.nn.LSTM(I, H, proj_size=2))
    with pytest.raises(ValueError, match="proj_size"):
        from_pytorch(torch.nn.LSTM(I, H, proj_size=2).state_dict())
    with pytest.raises(ValueError, match="unexpected|not one of"):
        from_pytorch({"weight_ih_l0": torch.zeros(4 * H, I), "weight": torch.zeros(1)})
    with pytest.raises(TypeError, match="module_or_state_dict"):
        from_pytorch(42)
    with pytest.raises(ValueError, match="layer-norm"):
        to_pytorch(xlstm.LSTMCell(H, I, layer_norm=True))
    with pytest.raises(ValueError, match="same hidden size"):
        to_pytorch(xlstm.MultiRNNCell([xlstm.LSTMCell(H, I), xlstm.LSTMCell(3, H)]))
    with pytest.raises(ValueError, match="cannot express"):
        to_pytorch(xlstm.LSTM([xlstm.Reversed(xlstm.LSTMCell(H, I))]))
