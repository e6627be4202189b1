"""`python -m xlstm walkthrough`: the article's forward pass, replayed figure by figure.

The article's example: batch 1, hidden size H=5, a vocabulary of 10 words (the sorted
distinct words of "long ago the mice had a general council to consider the"), the three
words "the mice had" as one-hot inputs, every entry of the fused 20×16 weight matrix
equal to 0.1 (TensorFlow's comparison setting), then an output projection, a softmax
and the cross-entropy loss for the next word, "a".

`walkthrough()` prints every shape and value the article draws and returns the host
values (Python lists and floats), so that tests can hold them to an independent oracle.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import xlstm
from xlstm_backends import dtype_name
from xlstm.cell import GATES, LSTMState

SENTENCE = "long ago the mice had a general council to consider the"
INPUT_WORDS = ("the", "mice", "had")
TARGET_WORD = "a"  # the word that follows "the mice had"
NUM_UNITS = 5
WEIGHT = 0.1  # every entry of W, bias column included

# The output layer of the article's example: kernel [H=5, V=10] (rows = hidden units,
# so y = h @ kernel + bias; the article's Wy [10, 5] is its transpose) and bias [10].
KERNEL = [
    [-0.09588283, -2.2044923, -0.74828255, 0.14180686, -0.32083616, -0.9444244, 0.06826905, -0.9728962, -0.18506959, 1.0618515],
    [1.156649, 3.2738173, -1.2556943, -0.9079511, -0.82127047, -1.1448543, -0.60807484, -0.5885713, 1.0378786, -0.7088431],
    [1.006477, 0.28033388, -0.1804534, 0.8093307, -0.36991575, 0.29115433, -0.01028167, -0.7357091, 0.92254084, -0.10753923],
    [0.19266959, 0.6108299, 2.2495654, 1.5288974, 1.0172302, 1.1311738, 0.2666629, -0.30611828, -0.01412263, 0.44799015],
    [0.19266959, 0.6108299, 2.2495654, 1.5288974, 1.0172302, 1.1311738, 0.2666629, -0.30611828, -0.01412263, 0.44799015],
]
BIAS = [0.1458478, -0.3660951, -2.1647317, -1.9633691, -0.24532059, 0.14005205, -1.0961286, -0.43737876, 0.7028531, -1.8481724]

GATE_NAMES = {"f": "forget", "i": "input", "c": "candidate", "o": "output"}
LABEL = 26  # width of the row labels of the value tables


def vocabulary(sentence: str = SENTENCE) -> list[str]:
    """The sorted distinct words of `sentence`: word j is one-hot position j."""
    return sorted(set(sentence.split()))


def walkthrough(
    backend: Any = None,
    device: Any = None,
    layer_norm: bool = False,
    write: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Replay the article's example, writing one line at a time with `write`.

    Returns host values, batch row 0 of each array: "h", "c", "preactivations", "f",
    "i", "g", "o" (one list per step), "logits", "softmax" (lists of 10), "loss"
    (float), plus "words", "inputs", "target" and "dynamic_rnn_max_abs_diff".
    """
    words = vocabulary()
    inputs = [words.index(word) for word in INPUT_WORDS]
    target = words.index(TARGET_WORD)
    vocab_size, steps = len(words), len(inputs)

    cell = xlstm.LSTMCell(NUM_UNITS, vocab_size, initializer=WEIGHT, bias_initializer=WEIGHT,
                          layer_norm=layer_norm, backend=backend, device=device)
    on = cell.backend
    x = xlstm.one_hot(xlstm.asarray([inputs], backend=on), vocab_size, dtype=cell.dtype)  # [1, T, V]

    write("xlstm walkthrough: the forward pass of the article's LSTM, figure by figure")
    write(f"backend {on.name}, device {on.device}, {dtype_name(cell.dtype)}, layer_norm={cell.layer_norm}"
          " (every number below was computed there)")
    one_hots = _host(x)[0]  # [T, V]
    _figure_1(write, words, inputs, one_hots)
    _figure_3(write, cell)
    _figure_4(write, cell)

    state = cell.zero_state(1)
    record: dict[str, list[Any]] = {key: [] for key in ("preactivations", "f", "i", "g", "o", "c", "h")}
    for t in range(steps):
        values = cell.step(x[:, t, :], state)
        _step(write, cell, t + 1, words[inputs[t]], inputs[t], one_hots[t], state, values, explain=t == 0)
        for key in record:
            record[key].append(_host(getattr(values, key))[0])
        state = LSTMState(values.c, values.h)

    difference = _figure_16(write, cell, x, record)

    dense = xlstm.Dense(vocab_size, NUM_UNITS, kernel=KERNEL, bias=BIAS, dtype=cell.dtype, backend=on)
    logits = dense(state.h)  # [1, V]
    probabilities = xlstm.softmax(logits)
    loss = xlstm.softmax_cross_entropy(logits, xlstm.asarray([target], backend=on))
    host_logits, host_softmax = _host(logits)[0], _host(probabilities)[0]
    host_loss = float(_host(loss))
    _figure_10(write, words, steps, _host(dense.kernel), _host(dense.bias), host_logits)
    _figure_12(write, words, target, host_softmax)
    _figure_13(write, words, target, host_softmax, host_loss)
    write("")
    gemm = "LN([x, h]·W[:, 1:]ᵀ)" if cell.layer_norm else "[1, x, h]·Wᵀ"
    write(f"figure-14: x → {gemm} → f, i, g, o → c_t, h_t → … → h_T·kernel + bias → softmax → loss")

    return {
        **record,
        "words": words,
        "inputs": inputs,
        "target": target,
        "dynamic_rnn_max_abs_diff": difference,
        "logits": host_logits,
        "softmax": host_softmax,
        "loss": host_loss,
    }


# ---------------------------------------------------------------------------- figures


def _figure_1(write: Callable[[str], Any], words: list[str], inputs: list[int], one_hots: list[list[float]]) -> None:
    write("")
    write(f"figure-1: batch B=1, hidden size H={NUM_UNITS} (both c and h), input size I={len(words)} (one-hot words)")
    write(f'  The sentence "{SENTENCE}" has {len(words)} distinct words;')
    write(f"  sorted, they are the vocabulary, and a word enters the LSTM as a one-hot vector of length {len(words)}.")
    write("  vocabulary: " + "  ".join(f"{j} {word}" for j, word in enumerate(words)))
    write(f'  inputs "{" ".join(INPUT_WORDS)}" = indices {inputs} → xlstm.one_hot → '
          f"x [B=1, T={len(inputs)}, I={len(words)}]:")
    for t, (index, row) in enumerate(zip(inputs, one_hots), start=1):
        write(f"    x_{t}  {words[index]:<5} " + " ".join(_bit(v) for v in row))
    write(f'  The word after "{" ".join(INPUT_WORDS)}" in the sentence is "{TARGET_WORD}": the target of figure-13.')


def _figure_3(write: Callable[[str], Any], cell: xlstm.LSTMCell) -> None:
    units, size = cell.num_units, cell.input_size
    weights = _host(cell.weights)
    write("")
    write(f"figure-3: W [4H={4 * units}, 1+I+H={1 + size + units}], the gates' weights and biases in one matrix")
    write(f"  Figure-2 draws each gate's {units}×{size + units} weights and {units}×1 biases, stacked;"
          " figure-3 fuses them:")
    write(f"  one row block per gate (f, i, c, o), column 0 the bias, columns x0..x{size - 1} multiply the one-hot x")
    write(f"  (column xj: word j), the last {units} multiply h_(t-1). Every entry is {WEIGHT}, as in the article's")
    write("  comparison with TensorFlow.")
    width, lead = 5, 15
    write(f"{'':{lead}}{'bias':>{width + 1}} |{'x (' + str(size) + ')':^{size * width}} |"
          f"{'h (' + str(units) + ')':^{units * width}}".rstrip())
    write(f"{'gate  unit':>{lead - 1}} {'1':>{width + 1}} |" + "".join(f"{'x' + str(j):>{width}}" for j in range(size))
          + " |" + "".join(f"{'h' + str(k):>{width}}" for k in range(units)))
    for row, values in enumerate(weights):
        gate, unit = GATES[row // units], row % units
        label = f"{gate} {GATE_NAMES[gate]}" if unit == 0 else ""
        cells = [f"{v:>{width}.3g}" for v in values]
        write(f"  {label:<12}{unit:>1}{cells[0]:>{width + 1}} |" + "".join(cells[1:1 + size])
              + " |" + "".join(cells[1 + size:]))


def _figure_4(write: Callable[[str], Any], cell: xlstm.LSTMCell) -> None:
    write("")
    write("figure-4: the equations, one step (⊙ is the elementwise product, σ the logistic sigmoid)")
    if cell.layer_norm:
        write("  a   = [x_t, h_(t-1)]·W[:, 1:]ᵀ      [1, 4H]  the bias column is NOT used under layer norm:")
        write("                                              the norm's shift (here 0) plays the bias")
        write(f"  LN  = normalise each gate's H units to mean 0, variance 1 (epsilon {cell.norm_epsilon:g}),"
              " gain 1, shift 0")
        write(f"  f = σ(LN(a_f) + forget_bias={cell.forget_bias})   i = σ(LN(a_i))   g = tanh(LN(a_c))"
              "   o = σ(LN(a_o))")
        write("  c_t = LN(f⊙c_(t-1) + i⊙g)   the new cell state is normalised too (and carried normalised)")
    else:
        write("  a   = [1, x_t, h_(t-1)]·Wᵀ          [1, 4H]  one GEMM for all four gates at once")
        write(f"  f = σ(a_f + forget_bias={cell.forget_bias})   i = σ(a_i)   g = tanh(a_c)   o = σ(a_o)")
        write("  c_t = f⊙c_(t-1) + i⊙g               forget_bias is added at run time, not stored in W")
    write("  h_t = o⊙tanh(c_t)                   c_0 = h_0 = 0 (a language model starts from zeros)")


def _step(write: Callable[[str], Any], cell: xlstm.LSTMCell, t: int, word: str, index: int, x_row: list[float],
          state: LSTMState, values: Any, explain: bool) -> None:
    units, ln = cell.num_units, cell.layer_norm
    h_prev = _host(state.h)[0]
    a = _host(values.preactivations)[0]
    write("")
    title = f"── step t={t}: x_{t} = one-hot of \"{word}\" (index {index}) "
    write(title + "─" * (80 - len(title)))
    write(f"figure-5: [1, x, h] → [1, {1 + cell.input_size + units}]   (1 | x_{t} | h_{t - 1})"
          + ("   (the 1 meets the bias column, unused here)" if ln else ""))
    write("  1 | " + " ".join(_bit(v) for v in x_row) + " | " + " ".join(_num(v) for v in h_prev))
    if ln:
        write(f"figure-5: GEMM a = [x, h]·W[:, 1:]ᵀ → [1, {4 * units}], one block of H={units} per gate (before layer norm)")
    else:
        write(f"figure-5: GEMM a = [1, x, h]·Wᵀ → [1, {4 * units}], one block of H={units} per gate")
    if explain:
        product = "Each row of W[:, 1:] dotted with [x, h]" if ln else "Each row of W dotted with [1, x, h]"
        write(f"  {product}. The {units} units of a gate agree: all weights are {WEIGHT}.")
    write(f"{'':{LABEL}}" + " ".join(f"{'unit ' + str(k):>11}" for k in range(units)))
    for block, gate in enumerate(GATES):
        _row(write, f"a_{gate}", a[block * units:(block + 1) * units])
    norm = (lambda name: f"LN({name})") if ln else (lambda name: name)
    write(f"figure-4/5: the gates, each [1, {units}]" + ("   (squashing functions applied to the blocks)" if explain else ""))
    _row(write, f"f = σ({norm('a_f')} + {cell.forget_bias})", _host(values.f)[0])
    _row(write, f"i = σ({norm('a_i')})", _host(values.i)[0])
    _row(write, f"g = tanh({norm('a_c')})", _host(values.g)[0])
    _row(write, f"o = σ({norm('a_o')})", _host(values.o)[0])
    new_c = f"f⊙c_{t - 1} + i⊙g"
    new_c = f"LN({new_c})" if ln else new_c
    write(f"figure-6/7: new cell state c_{t} [1, {units}]"
          + ("   forget part of the old state, add part of the candidate" if explain else ""))
    _row(write, f"c_{t} = {new_c}", _host(values.c)[0])
    write(f"figure-8/9: new hidden state h_{t} [1, {units}]"
          + ("   what the cell shows outside; c_t and h_t go on to step t+1" if explain else ""))
    _row(write, f"h_{t} = o⊙tanh(c_{t})", _host(values.h)[0])
    if explain and ln:
        write("  With equal weights a gate's units are equal, layer norm maps them to 0, and h stays 0: the")
        write("  symmetry a random initialiser (xlstm.init.glorot_uniform, the default) is there to break.")


def _figure_16(write: Callable[[str], Any], cell: xlstm.LSTMCell, x: Any, record: dict[str, list[Any]]) -> float:
    outputs, final = xlstm.dynamic_rnn(cell, x)
    outputs_host = _host(outputs)[0]  # [T, H]
    pairs = [(o, h) for out_t, h_t in zip(outputs_host, record["h"]) for o, h in zip(out_t, h_t)]
    pairs += list(zip(_host(final.c)[0], record["c"][-1]))
    difference = max(abs(a - b) for a, b in pairs)
    write("")
    write(f"figure-16: xlstm.dynamic_rnn(cell, x) runs all {len(record['h'])} steps → outputs [1, "
          f"{len(record['h'])}, {cell.num_units}] and final state (c, h)")
    write(f"  In practice dynamic_rnn does the iteration; its outputs must equal h_1..h_{len(record['h'])}"
          f" and its final c, c_{len(record['h'])}:")
    write(f"  largest |difference| = {difference:.3g}")
    if not difference <= 1e-5:
        raise RuntimeError(f"dynamic_rnn disagrees with the step-by-step cell by {difference:.3g}")
    return difference


def _figure_10(write: Callable[[str], Any], words: list[str], t: int, kernel: list[list[float]],
               bias: list[float], logits: list[float]) -> None:
    units = len(kernel)
    write("")
    write(f"figure-10: logits y = h_{t}·kernel + bias → [1, {len(words)}]")
    write(f"  xlstm.Dense kernel [H={units}, V={len(words)}] is the article's Wy [{len(words)}, {units}] transposed;"
          f" bias [{len(words)}] is its by.")
    write(f"  The last hidden state scores each word of the vocabulary: y[j] = Σ_k h_{t}[k]·Wy[j, k] + by[j].")
    write(f"  {'j':>2}  {'word':<9}" + " ".join(f"{'Wy[j,' + str(k) + ']':>11}" for k in range(units))
          + f" {'by[j]':>11} {'y[j]':>11}")
    for j, word in enumerate(words):
        write(f"  {j:>2}  {word:<9}" + " ".join(_num(kernel[k][j]) for k in range(units))
              + f" {_num(bias[j])} {_num(logits[j])}")


def _figure_12(write: Callable[[str], Any], words: list[str], target: int, probabilities: list[float]) -> None:
    best = max(range(len(words)), key=lambda j: probabilities[j])
    write("")
    write(f"figure-12: softmax ŷ = exp(y) / Σ exp(y) → [1, {len(words)}]   (ŷ, \"y-hat\")")
    write(f"  The scores become probabilities for the next word; they sum to {sum(probabilities):.6f}.")
    for j, word in enumerate(words):
        notes = [note for note, hit in (("target", j == target), ("most likely", j == best)) if hit]
        bar = "█" * round(30 * probabilities[j])
        write(f"  {j:>2}  {word:<9}{_num(probabilities[j])}  {bar:<30} {', '.join(notes)}".rstrip())


def _figure_13(write: Callable[[str], Any], words: list[str], target: int, probabilities: list[float],
               loss: float) -> None:
    write("")
    write(f"figure-13: cross-entropy loss = -log ŷ[target] → a scalar, target \"{words[target]}\" = index {target}")
    write("  Small when the model gives the right word a high probability (0 when it is certain).")
    write(f"  by hand: -log ŷ[{target}] = -log({probabilities[target]:.8f}) = {-math.log(probabilities[target]):.8f}")
    write(f"  xlstm.softmax_cross_entropy(y, [{target}]) = {loss:.8f}   (the same, to float32 precision)")


# ---------------------------------------------------------------------------- formatting


def _host(x: Any) -> Any:
    """Host copy of an array of any backend, as (nested) Python lists or a float."""
    return xlstm.to_numpy(x).tolist()


def _num(v: float) -> str:
    """Fixed width, 8 decimals: the gates and states lie within [-1, 1], so 8 significant digits."""
    return f"{v:11.8f}"


def _bit(v: float) -> str:
    """A one-hot entry, 0 or 1."""
    return f"{v:g}"


def _row(write: Callable[[str], Any], label: str, values: list[float]) -> None:
    write(f"  {label:<{LABEL - 2}}" + " ".join(_num(v) for v in values))
