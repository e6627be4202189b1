"""`CharLM`: a character (or word) language model, the article's promised next step.

    ids [B, T] → embedding lookup [B, T, E] → stacked cells [B, T, H] → Dense [B, T, V]
    → softmax cross-entropy against the next token at every step.

Training uses truncated backpropagation through time: the final state of one window is
the initial state of the next, but no gradient flows across the window boundary.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

from xlstm_backends import Backend, asarray, get_backend
from xlstm import init
from xlstm.cell_kinds import layer_kinds, make_cell
from xlstm.checks import check_integer, check_positive_int, check_range, check_shape, namespace_of
from xlstm.dense import Dense
from xlstm.losses import softmax_cross_entropy, softmax_cross_entropy_vjp
from xlstm.rnn import dynamic_rnn, dynamic_rnn_vjp
from xlstm.stack import MultiRNNCell
from xlstm.table_rows import TableRows


LOGIT_BLOCK_ELEMENTS = 1 << 22  # logits (4 Mi, 16 MiB in float32) computed at a time in a step


class LossAndGrads(NamedTuple):
    loss: Any  # mean cross-entropy in nats, a 0-d array
    grads: dict[str, Any]  # keyed like CharLM.parameters()
    state: tuple  # final state (one per layer), to carry into the next window


class CharLM:
    """Embedding → MultiRNNCell (LSTM, sLSTM or mLSTM cells, see `cell`) → Dense, trained on next-token
    prediction."""

    def __init__(
        self,
        vocab_size: int,
        *,
        embedding_size: int = 32,
        hidden_size: int = 128,
        num_layers: int = 2,
        layer_norm: bool = False,
        dropout_keep_prob: float = 1.0,
        forget_bias: float = 1.0,
        cell: str = "lstm",
        num_heads: int = 4,
        dtype: Any = None,
        seed: int | None = None,
        backend: str | Backend | None = None,
        device: Any = None,
    ) -> None:
        self.vocab_size = check_positive_int("vocab_size", vocab_size)
        self.embedding_size = check_positive_int("embedding_size", embedding_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.layer_norm, self.dropout_keep_prob, self.forget_bias, self.seed = (
            bool(layer_norm), dropout_keep_prob, forget_bias, seed)
        self.cell_pattern, self.num_heads = cell, check_positive_int("num_heads", num_heads)
        kinds = layer_kinds(cell, self.num_layers)
        self.backend = get_backend(backend, device)
        self.dtype = self.backend.resolve_dtype(dtype)
        layer_seed = (lambda k: None if seed is None else seed + k)  # noqa: E731
        self.embedding = init.uniform(-0.1, 0.1)((vocab_size, embedding_size), self.dtype,
                                                 self.backend.random(seed, stream=2))
        sizes = [embedding_size] + [hidden_size] * num_layers
        self.stack = MultiRNNCell([
            make_cell(kind, hidden_size, sizes[k], num_heads=self.num_heads, layer_norm=self.layer_norm,
                      dropout_keep_prob=dropout_keep_prob, forget_bias=forget_bias, dtype=self.dtype,
                      seed=layer_seed(k + 1), backend=self.backend)
            for k, kind in enumerate(kinds)])
        self.dense = Dense(vocab_size, hidden_size, dtype=self.dtype, seed=layer_seed(num_layers + 1),
                           backend=self.backend)

    @property
    def training(self) -> bool:
        """True while training (dropout on); False in inference, after eval()."""
        return self.stack.cells[0].training

    def train(self, mode: bool = True) -> "CharLM":
        """Switch every cell to training (mode=True, the default) or inference; returns self."""
        for cell in self.stack.cells:
            cell.train(mode)
        return self

    def eval(self) -> "CharLM":
        """Switch to inference: no dropout; returns self."""
        return self.train(False)

    def config(self) -> dict[str, Any]:
        """The constructor's settings (without arrays), to rebuild or save the model."""
        return {"vocab_size": self.vocab_size, "embedding_size": self.embedding_size,
                "hidden_size": self.hidden_size, "num_layers": self.num_layers, "layer_norm": self.layer_norm,
                "dropout_keep_prob": self.dropout_keep_prob, "forget_bias": self.forget_bias,
                "cell": self.cell_pattern, "num_heads": self.num_heads, "seed": self.seed}

    def parameters(self) -> dict[str, Any]:
        """Every trainable array: "embedding", "cell_K/...", "dense/kernel", "dense/bias"."""
        return {"embedding": self.embedding, **self.stack.parameters(),
                **{f"dense/{name}": value for name, value in self.dense.parameters().items()}}

    def draw_dropout_for_rows(self, rows: slice, batch_size: int) -> None:
        """Data parallelism: this model trains `rows` of a global batch of `batch_size`; its dropout
        masks are cut from the whole batch's, as one process would draw them."""
        for cell in self.stack.cells:
            cell.dropout_rows = (rows, batch_size)

    def set_parameters(self, parameters: dict[str, Any]) -> None:
        """Replace the arrays (e.g. after an optimiser step); keys and shapes must match.

        Arrays already on the model's backend and in its dtype are kept as they are, not copied
        (an optimiser's step hands out new arrays; nothing in xlstm writes into them).
        """
        current = self.parameters()
        if set(parameters) != set(current):
            missing, extra = sorted(set(current) - set(parameters)), sorted(set(parameters) - set(current))
            raise ValueError(f"parameters must have the keys of CharLM.parameters(); missing {missing}, extra {extra}")
        for name, value in parameters.items():
            value = asarray(value, backend=self.backend)
            if value.dtype != self.dtype:
                value = asarray(value, dtype=self.dtype, backend=self.backend)
            check_shape(f"parameters[{name!r}]", value, tuple(current[name].shape))
            if name == "embedding":
                self.embedding = value
            elif name.startswith("dense/"):
                setattr(self.dense, name.removeprefix("dense/"), value)
            else:
                layer, attribute = name.split("/")
                setattr(self.stack.cells[int(layer.removeprefix("cell_"))], attribute, value)

    def zero_state(self, batch_size: int) -> tuple:
        return self.stack.zero_state(batch_size)

    def _embed(self, ids: Any, time_major: bool = False) -> Any:
        """Row lookup in the embedding table (a take, no one-hot matmul): ids [B, T] → [B, T, E]
        ([T, B, E] when time_major)."""
        self._check_ids(ids)
        xp = namespace_of(ids=ids, embedding=self.embedding)
        ordered = xp.permute_dims(ids, (1, 0)) if time_major else ids
        rows = xp.take(self.embedding, xp.reshape(ordered, (-1,)), axis=0)
        return xp.reshape(rows, (*ordered.shape, self.embedding_size))

    def _check_ids(self, ids: Any) -> None:
        """ids must be [batch, time] token ids of the vocabulary (checked before any work)."""
        xp = namespace_of(ids=ids, embedding=self.embedding)
        check_integer("inputs", ids, xp)
        check_shape("inputs", ids, (None, None), "[batch, time] token ids")
        check_range("inputs", ids, xp, 0, self.vocab_size - 1, "token ids of the vocabulary")

    def loss_and_grads(self, inputs: Any, targets: Any, state: tuple | None = None) -> LossAndGrads:
        """Mean next-token cross-entropy over the window, its gradients and the final state.

        The window runs time-major ([T, B] ids, [T, B, H] outputs): the loop produces its outputs
        and consumes their gradients in that layout, so the dense layer's rows, the gradient
        handed back and the embedding's rows are all contiguous, with no transposing copies. The
        mean over every position does not depend on the order of the rows.
        """
        xp = namespace_of(inputs=inputs, targets=targets, embedding=self.embedding)
        self._check_ids(inputs)
        self._check_targets(targets, inputs, xp)
        # The embedding rows go in as TableRows, so the backward pass hands back the embedding's
        # gradient itself (each position's input gradient added to its token's row).
        embedded = TableRows(self.embedding, xp.permute_dims(inputs, (1, 0)))
        outputs, final_state, rnn_backward = dynamic_rnn_vjp(self.stack, embedded, state, time_major=True)
        flat_outputs, flat_targets = self._flat(outputs, targets, xp)
        fused = self.backend.library.output_layer_kernels()
        loss, d_outputs, kernel_grads, bias_grads = 0.0, [], [], []
        for rows, share in self._row_blocks(flat_targets.shape[0]):
            if fused is None:
                block_loss, d_x, d_kernel, d_bias = self._output_layer_vjp(flat_outputs[rows, :], flat_targets[rows],
                                                                           share)
            else:  # the library's one call for the same (Library.output_layer_kernels)
                block_loss, d_x, d_kernel, d_bias = fused.dense_softmax_cross_entropy(
                    flat_outputs[rows, :], self.dense.kernel, self.dense.bias, flat_targets[rows],
                    1.0 / flat_targets.shape[0])
            loss = loss + block_loss
            d_outputs.append(d_x)
            kernel_grads.append(d_kernel)
            bias_grads.append(d_bias)
        d_flat = d_outputs[0] if len(d_outputs) == 1 else xp.concat(d_outputs, axis=0)  # one block: no copy
        rnn_grads = rnn_backward(xp.reshape(d_flat, tuple(outputs.shape)))
        d_embedding = rnn_grads.pop("inputs")
        rnn_grads.pop("initial_state")
        grads = {"embedding": d_embedding, **rnn_grads,
                 "dense/kernel": sum(kernel_grads[1:], kernel_grads[0]),
                 "dense/bias": sum(bias_grads[1:], bias_grads[0])}
        return LossAndGrads(loss, grads, final_state)

    def _check_targets(self, targets: Any, inputs: Any, xp: Any) -> None:
        """Targets must be token ids of the vocabulary shaped like the inputs (checked before any work)."""
        check_shape("targets", targets, tuple(inputs.shape), "like inputs")
        check_integer("targets", targets, xp)
        check_range("targets", targets, xp, 0, self.vocab_size - 1, "token ids of the vocabulary")

    def _output_layer_vjp(self, x: Any, labels: Any, share: float) -> tuple[Any, Any, Any, Any]:
        """(share · mean loss, d_x, d_kernel, d_bias) of rows x [N, H] against labels [N], by the generic
        Dense.vjp and softmax_cross_entropy_vjp."""
        logits, dense_backward = self.dense.vjp(x)
        block_loss, loss_backward = softmax_cross_entropy_vjp(logits, labels)
        grads = dense_backward(loss_backward(share))
        return block_loss * share, grads["inputs"], grads["kernel"], grads["bias"]

    def loss(self, inputs: Any, targets: Any, state: tuple | None = None) -> tuple[Any, tuple]:
        """Mean next-token cross-entropy (no gradients) and the final state, for evaluation."""
        xp = namespace_of(inputs=inputs, targets=targets, embedding=self.embedding)
        self._check_targets(targets, inputs, xp)
        embedded = self._embed(inputs, time_major=True)  # as in loss_and_grads
        outputs, final_state = dynamic_rnn(self.stack, embedded, state, time_major=True)
        flat_outputs, flat_targets = self._flat(outputs, targets, xp)
        loss = 0.0
        for rows, share in self._row_blocks(flat_targets.shape[0]):
            loss = loss + softmax_cross_entropy(self.dense(flat_outputs[rows, :]), flat_targets[rows]) * share
        return loss, final_state

    def _flat(self, outputs: Any, targets: Any, xp: Any) -> tuple[Any, Any]:
        """Time-major outputs [T, B, H] → [T·B, H] and targets [B, T] → [T·B], row for row."""
        rows = targets.shape[0] * targets.shape[1]
        return (xp.reshape(outputs, (rows, self.hidden_size)),
                xp.reshape(xp.permute_dims(targets, (1, 0)), (rows,)))

    def _row_blocks(self, rows: int) -> list[tuple[slice, float]]:
        """Row ranges of at most LOGIT_BLOCK_ELEMENTS logits each, and each range's share of the rows.

        The [rows, V] logits are the largest arrays of a step; taking them a block at a time keeps
        memory bounded at large vocabularies (one block, share 1.0, at small ones).
        """
        size = max(1, LOGIT_BLOCK_ELEMENTS // self.vocab_size)
        return [(slice(start, min(start + size, rows)), (min(start + size, rows) - start) / rows)
                for start in range(0, rows, size)]

    def generate(self, prompt: list[int], length: int, temperature: float = 1.0, top_k: int | None = None,
                 seed: int | None = None) -> list[int]:
        """Continue the token ids `prompt` by `length` sampled ids.

        Each next token is drawn from softmax(logits / temperature), restricted to the
        `top_k` most likely tokens when given; the same seed gives the same text.
        """
        if not isinstance(prompt, (list, tuple)) or not prompt:
            raise ValueError("prompt must be a non-empty list of token ids")
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise ValueError(f"length must be a non-negative integer, got {length!r}")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
        xp, stream = self.backend.xp, self.backend.random(seed, stream=3)
        ids = asarray([list(prompt)], backend=self.backend)
        training = self.training
        self.eval()  # sampling is inference: no dropout
        try:
            outputs, state = dynamic_rnn(self.stack, self._embed(ids))
            h, generated = outputs[:, -1, :], []
            for _ in range(length):
                token = self._sample(self.dense(h) / float(temperature), top_k, stream, xp)
                generated.append(token)
                h, state = self.stack(self._embed(asarray([[token]], backend=self.backend))[:, 0, :], state)
        finally:
            self.train(training)
        return generated

    def _sample(self, logits: Any, top_k: int | None, stream: Any, xp: Any) -> int:
        """One token id drawn from softmax(logits [1, V]) by inverting its cumulative sum."""
        if top_k is not None and top_k < self.vocab_size:
            threshold = xp.sort(logits, axis=-1, descending=True)[:, top_k - 1 : top_k]
            logits = xp.where(logits >= threshold, logits, xp.full_like(logits, -math.inf))
        probabilities = xp.exp(logits - xp.max(logits, axis=-1, keepdims=True))
        cumulative = xp.cumulative_sum(probabilities[0, :])
        draw = stream.uniform((1,), 0.0, 1.0, self.dtype) * cumulative[-1]
        return min(int(xp.sum(xp.astype(cumulative <= draw, xp.int64))), self.vocab_size - 1)

    def to(self, backend: str | Backend, device: Any = None) -> "CharLM":
        """A copy of the model on another backend/device."""
        copy = CharLM(**self.config(), dtype=self.dtype, backend=get_backend(backend, device))
        copy.set_parameters({name: asarray(value, backend=copy.backend) for name, value in self.parameters().items()})
        return copy
