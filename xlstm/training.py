"""Train a CharLM on a text with truncated BPTT, evaluate it, checkpoint it, resume it.

The command line (`python -m xlstm train`) is a thin layer over `train()`.
"""
from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

from xlstm_backends import Backend, Communicator, SingleProcess, device_for_rank, get_backend, to_numpy
from xlstm import metrics, optim
from xlstm.cell_kinds import describe, layer_kinds
from xlstm.checkpoint import FILE_NAME, Checkpoint, load_checkpoint, save_checkpoint
from xlstm.corpus import Corpus
from xlstm.data import BatchStream, Vocabulary, split_train_validation
from xlstm.models import CharLM
from xlstm.parallel import (
    average_over_ranks,
    gather_state,
    local_loss_sum,
    mean_over_ranks,
    row_block,
    share_rows,
    split_state,
)

OPTIMIZERS = ("adam", "adamw", "sgd")
LOSS_SLOT = "loss"  # the loss travels in the gradients' allreduce buffer under this name
MODEL_FLAGS = ("level", "embedding_size", "hidden_size", "num_layers", "layer_norm", "dropout_keep_prob", "dtype",
               "cell", "num_heads")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; the defaults train in about two minutes on 2 cores."""

    steps: int = 2000
    batch_size: int = 32
    window: int = 64
    level: str = "char"
    embedding_size: int = 32
    hidden_size: int = 192
    num_layers: int = 1
    cell: str = "lstm"  # lstm, slstm or mlstm; or one per layer, bottom first: "mlstm,slstm"
    num_heads: int = 4  # heads of the sLSTM and mLSTM cells
    layer_norm: bool = False
    dropout_keep_prob: float = 1.0
    dtype: str = "float32"
    optimizer: str = "adam"
    learning_rate: float = 5e-3
    clip_norm: float = 5.0
    validation_fraction: float = 0.05
    eval_every: int = 500
    checkpoint_every: int = 500
    seed: int = 0
    eval_tokens: int | None = 50_000  # the first N validation tokens (all of the default corpus's); None: all


    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "window", "embedding_size", "hidden_size", "num_layers", "num_heads",
                     "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.eval_tokens is not None and (
                isinstance(self.eval_tokens, bool) or not isinstance(self.eval_tokens, int)
                or self.eval_tokens < self.window + 1):
            raise ValueError(f"eval_tokens (--eval-tokens) must be None ('all') or an integer of at least "
                             f"window + 1 = {self.window + 1}, got {self.eval_tokens!r}")
        if set(layer_kinds(self.cell, self.num_layers)) != {"lstm"}:
            if self.layer_norm or self.dropout_keep_prob != 1.0:
                raise ValueError("--layer-norm and --dropout-keep-prob apply to lstm cells only, "
                                 f"and --cell is {self.cell!r}")
            if self.hidden_size % self.num_heads:
                raise ValueError(f"--num-heads {self.num_heads} must divide --hidden-size {self.hidden_size} "
                                 f"(each head holds hidden_size / num_heads units)")
        if not self.learning_rate > 0 or not self.clip_norm > 0:
            raise ValueError("learning_rate and clip_norm must be positive, "
                             f"got {self.learning_rate!r} and {self.clip_norm!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class TrainResult:
    checkpoint: Checkpoint
    validation_loss: float  # nats per token
    unigram_entropy_bits: float  # of the training text's token frequencies
    tokens_per_second: float
    sample: str


def unigram_entropy_bits(counts: Iterable[int]) -> float:
    """-Σ p log2 p over token frequencies (counts): what a model that ignores context achieves."""
    counts = [n for n in counts if n]
    total = sum(counts)
    return -sum(n / total * math.log2(n / total) for n in counts)


def evaluate(model: CharLM, stream: BatchStream, communicator: Communicator | None = None) -> float:
    """Mean next-token cross-entropy (nats) over every window, the state carried across them,
    in inference mode (no dropout). Under MPI each rank evaluates its share of the rows and
    the sums are reduced: the same number as one process's, to float rounding."""
    communicator = SingleProcess() if communicator is None else communicator
    rows = share_rows(stream.batch_size, communicator.rank, communicator.size)
    training = model.training
    model.eval()
    try:
        total, count = local_loss_sum(model.loss, stream, rows)
    finally:
        model.train(training)
    return mean_over_ranks(total, count, communicator)


def make_optimizer(config: TrainConfig) -> optim.Optimizer:
    if config.optimizer == "sgd":
        return optim.SGD(config.learning_rate, momentum=0.9)
    kind = optim.Adam if config.optimizer == "adam" else optim.AdamW
    return kind(learning_rate=config.learning_rate)


def check_out_dir(out_dir: Path, resume: bool) -> Path:
    """The run folder must not be a file, and must hold a checkpoint exactly when resuming."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; it must be a folder for checkpoints")
    if resume and not (out_dir / FILE_NAME).is_file():
        raise ValueError(f"--resume: there is no checkpoint {out_dir / FILE_NAME} to continue from")
    if not resume and (out_dir / FILE_NAME).exists():
        raise ValueError(f"--out {out_dir} already holds a checkpoint; pass --resume to continue it, "
                         "or choose another --out (nothing was overwritten)")
    return out_dir


def train(
    text: str | os.PathLike[str],
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    backend: str | Backend | None = None,
    device: Any = None,
    write: Callable[[str], Any] = print,
    progress: bool = True,
    communicator: Communicator | None = None,
) -> TrainResult:
    """Train (or continue training) a CharLM; checkpoints, metrics.jsonl and loss.png go to `out_dir`.

    `text` is the text itself (a str) or the path of a UTF-8 file (a pathlib.Path or other
    os.PathLike), which is streamed into a token cache in `out_dir` and read as a memory map.
    With a `communicator` of several ranks (MPI) every rank calls this: each trains its row
    block of the global batch, and rank 0 alone prints and writes. Wrap the call in
    `ending_every_rank_on_error(communicator)` so an error on one rank ends them all.
    """
    if not isinstance(text, (str, os.PathLike)):
        raise TypeError(f"text must be a str (the text) or a pathlib.Path (a UTF-8 file), got {type(text).__name__}")
    communicator = SingleProcess() if communicator is None else communicator
    rows = row_block(config.batch_size, communicator.rank, communicator.size)  # refused before any work
    out_dir = check_out_dir(Path(out_dir), resume)
    target = _rank_backend(backend, device, communicator)
    if communicator.rank != 0:  # one writer: the other ranks print nothing and draw no progress bar
        write, progress = _silent, False
    _announce(communicator, target, write)
    resumed = load_checkpoint(out_dir, backend=target) if resume else None
    check = (lambda vocabulary: None) if resumed is None else (lambda v: _check_same_run(resumed, config, v))
    corpus = _load_corpus(text, config.level, out_dir, check, write, communicator)
    vocabulary = corpus.vocabulary
    train_ids, validation_ids = split_train_validation(corpus.ids, config.validation_fraction)
    train_stream = BatchStream(train_ids, config.batch_size, config.window, backend=target)
    evaluated_ids = validation_ids if config.eval_tokens is None else validation_ids[:config.eval_tokens]
    validation_batch = max(1, min(config.batch_size, len(evaluated_ids) // (config.window + 1)))
    validation_stream = BatchStream(evaluated_ids, validation_batch, config.window, backend=target)

    optimizer = make_optimizer(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    if resumed is not None:
        checkpoint = resumed
        if checkpoint.optimizer_state is not None:
            optimizer.load_state_dict(checkpoint.optimizer_state)
        write(f"resuming {out_dir / FILE_NAME} at step {checkpoint.step}")
    else:
        model = CharLM(len(vocabulary), embedding_size=config.embedding_size, hidden_size=config.hidden_size,
                       num_layers=config.num_layers, cell=config.cell, num_heads=config.num_heads,
                       layer_norm=config.layer_norm, seed=config.seed,
                       dropout_keep_prob=config.dropout_keep_prob, dtype=config.dtype, backend=target)
        checkpoint = Checkpoint(model, vocabulary, asdict(config), 0, None, None, [])
    model = checkpoint.model
    state = split_state(checkpoint.carried_state, rows)  # the checkpoint holds every row: any rank count resumes
    if communicator.size > 1:
        model.draw_dropout_for_rows(rows, config.batch_size)
    entropy = unigram_entropy_bits(corpus.token_counts(len(train_ids)))
    head = f" (evaluating the first {len(evaluated_ids):,})" if len(evaluated_ids) < len(validation_ids) else ""
    write(f"corpus: {len(train_ids):,} training and {len(validation_ids):,} validation {config.level}s{head}, "
          f"vocabulary {len(vocabulary)}, unigram entropy {entropy:.3f} bits per {config.level}")
    write(f"model: {describe(layer_kinds(config.cell, config.num_layers), config.hidden_size)}, "
          f"embedding {config.embedding_size}, "
          f"{sum(math.prod(p.shape) for p in model.parameters().values()):,} parameters, on {target.name}")

    def save(step: int) -> None:
        carried = gather_state(state, communicator, target)  # a collective: every rank takes part
        if communicator.rank == 0:
            checkpoint.step, checkpoint.carried_state = step, carried
            checkpoint.optimizer_state = optimizer.state_dict()
            save_checkpoint(out_dir / FILE_NAME, checkpoint)

    log = (metrics.MetricsLog(out_dir / metrics.FILE_NAME, from_step=checkpoint.step) if communicator.rank == 0
           else _NoLog())
    first_step, tokens, reducing, started = checkpoint.step, 0, 0.0, time.perf_counter()
    bar = _progress(range(first_step, config.steps), progress, first_step, config.steps)
    for step in bar:
        if step % len(train_stream) == 0:
            state = None  # a new epoch starts from the beginning of every row
        inputs, targets = train_stream.window(step)
        loss, grads, state = model.loss_and_grads(inputs[rows, ...], targets[rows, ...], state)
        reduce_started = time.perf_counter()
        mean = average_over_ranks({LOSS_SLOT: loss, **grads}, communicator)  # one allreduce per step
        reducing += time.perf_counter() - reduce_started
        loss = mean.pop(LOSS_SLOT)
        grads, grad_norm = optim.clip_by_global_norm(mean, config.clip_norm)
        model.set_parameters(optimizer.step(model.parameters(), grads))
        loss_value = float(to_numpy(loss))
        checkpoint.history.append({"step": step + 1, "loss": loss_value})
        tokens += config.batch_size * config.window
        rate = tokens / (time.perf_counter() - started)
        log.write(step=step + 1, loss=loss_value, tokens_per_s=rate, learning_rate=optimizer.learning_rate,
                  grad_norm=float(to_numpy(grad_norm)))
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss_value:.3f}", tokens_per_s=f"{rate:,.0f}", refresh=False)
        done = step + 1
        if done % config.eval_every == 0 or done == config.steps:  # always after the last step
            validation = evaluate(model, validation_stream, communicator)
            checkpoint.history[-1]["validation_loss"] = validation
            log.write(step=done, validation_loss=validation, bits_per_token=validation / math.log(2))
            _report(write, done, validation, config.level)
        if done % config.checkpoint_every == 0 or done == config.steps:
            save(done)
    log.close()

    elapsed = max(time.perf_counter() - started, 1e-9)
    rate = tokens / elapsed
    bits = validation / math.log(2)
    write(f"validation: {bits:.3f} bits per {config.level} against a unigram entropy of {entropy:.3f} "
          f"({entropy - bits:+.3f} better); {rate:,.0f} tokens per second")
    if communicator.size > 1:
        write(f"data-parallel: {1e3 * reducing / (config.steps - first_step):.2f} ms per step in the gradient allreduce on rank 0 "
              f"({100 * reducing / elapsed:.0f}% of the time)")
    if communicator.rank != 0:
        return TrainResult(checkpoint, validation, entropy, rate, "")
    prompt_ids = [int(i) for i in validation_ids[:16]]
    sample = vocabulary.decode(prompt_ids) + vocabulary.decode(
        model.generate(prompt_ids, 300, temperature=0.8, seed=config.seed))
    write("sample (prompt taken from the validation text, temperature 0.8):")
    write(sample)
    _plot_metrics(metrics.read_metrics(log.path), out_dir / "loss.png", write)
    return TrainResult(checkpoint, validation, entropy, rate, sample)


def _rank_backend(backend: str | Backend | None, device: Any, communicator: Communicator) -> Backend:
    """The backend on this rank's device: under MPI, one GPU per rank of each machine."""
    target = get_backend(backend, device)
    if communicator.size == 1:
        return target
    return get_backend(target, device_for_rank(target.name, device, communicator.local_rank))


def _announce(communicator: Communicator, target: Backend, write: Callable[[str], Any]) -> None:
    """Under MPI, rank 0 first says how many ranks there are and where each one computes."""
    if communicator.size == 1:
        return
    places = communicator.gather(f"{target.name} on {target.device}, host {socket.gethostname()}")
    write(f"data-parallel: {communicator.describe()}")
    for rank, place in enumerate(places or []):
        write(f"  rank {rank}: {place}")


def _load_corpus(text: str | os.PathLike[str], level: str, out_dir: Path, check: Callable[[Vocabulary], Any],
                 write: Callable[[str], Any], communicator: Communicator) -> Corpus:
    """The text as token ids. A file goes through the token cache in `out_dir`: rank 0 builds it
    (checked before it is rewritten) while the other ranks wait, then they map it read-only."""
    if isinstance(text, str):
        corpus = Corpus.from_text(text, level)
        check(corpus.vocabulary)
        return corpus
    corpus = Corpus.from_file(text, level, out_dir, check=check, write=write) if communicator.rank == 0 else None
    communicator.barrier()
    return corpus if corpus is not None else Corpus.from_cache(out_dir, check=check)


def _silent(line: str) -> None:
    """The `write` of ranks other than 0."""


class _NoLog:
    """The metrics log of ranks other than 0: writes nothing."""

    def write(self, **record: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _check_same_run(checkpoint: Checkpoint, config: TrainConfig, vocabulary: Vocabulary) -> None:
    """A resume must use the model flags and text of the run it continues."""
    saved = checkpoint.training
    defaults = TrainConfig()  # what a checkpoint from before a flag existed ran with
    different = [f"--{name.replace('_', '-')} {saved.get(name, getattr(defaults, name))!r} → {getattr(config, name)!r}"
                 for name in MODEL_FLAGS + ("batch_size", "window", "seed", "optimizer")
                 if saved.get(name, getattr(defaults, name)) != getattr(config, name)]
    if different:
        raise ValueError("--resume with different flags than the checkpoint's run: " + "; ".join(different))
    if checkpoint.vocabulary != vocabulary:
        raise ValueError("--resume with a different text: its vocabulary differs from the checkpoint's")
    if checkpoint.step >= config.steps:
        raise ValueError(f"--resume: the checkpoint is already at step {checkpoint.step}; "
                         f"pass --steps larger than that to train further")


def _report(write: Callable[[str], Any], step: int, validation: float, level: str) -> None:
    write(f"step {step}: validation loss {validation:.4f} nats, perplexity {math.exp(validation):.2f}, "
          f"{validation / math.log(2):.3f} bits per {level}")


def _progress(steps: range, enabled: bool, first: int, total: int) -> Any:
    if not enabled:
        return steps
    from tqdm import tqdm

    return tqdm(steps, initial=first, total=total, desc="train", unit="step", mininterval=1.0)


def _plot_metrics(records: list[dict[str, Any]], path: Path, write: Callable[[str], Any]) -> None:
    """Training and validation loss curves from the metrics log, as a PNG, when matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        write("matplotlib is not installed: no loss curve (pip install 'xlstm-array[plot]')")
        return
    figure, axes = pyplot.subplots(figsize=(7, 4))
    steps = [r for r in records if "loss" in r]
    axes.plot([r["step"] for r in steps], [r["loss"] / math.log(2) for r in steps], label="training")
    checked = [r for r in records if "bits_per_token" in r]
    axes.plot([r["step"] for r in checked], [r["bits_per_token"] for r in checked], "o-", label="validation")
    axes.set_xlabel("step")
    axes.set_ylabel("bits per token")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    write(f"loss curve: {path}")
