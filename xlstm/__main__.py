"""`python -m xlstm COMMAND`: the command-line entry point (argument parsing only)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from xlstm_backends import LIBRARIES, BackendError, CommunicatorError, available_backends
from xlstm.bench import add_bench_parser

# Errors that mean the input (flags, files, environment) cannot be used: exit 2 with the reason.
BAD_INPUT = (BackendError, CommunicatorError, ValueError, TypeError, FileNotFoundError)


def _print_backends(_: argparse.Namespace) -> int:
    """The table of backends and whether each can run here."""
    rows = [(name, "usable" if reason is None else "no", LIBRARIES[name].description if reason is None else reason)
            for name, reason in available_backends().items()]
    width = max(len(name) for name, _, _ in rows)
    print(f"{'backend':<{width}}  usable  notes")
    for name, usable, note in rows:
        print(f"{name:<{width}}  {usable:<6}  {note}")
    return 0


def _walkthrough(args: argparse.Namespace) -> int:
    from xlstm.walkthrough import walkthrough

    walkthrough(backend=args.backend, device=args.device, layer_norm=args.layer_norm)
    return 0


def _train(args: argparse.Namespace) -> int:
    """Train on one process, or data-parallel on every rank of `mpiexec -n N python -m xlstm train`."""
    from pathlib import Path

    from tqdm import tqdm

    from xlstm_backends import ending_every_rank_on_error, get_communicator
    from xlstm.data import default_corpus
    from xlstm.training import TrainConfig, train

    communicator = get_communicator()  # several ranks without mpi4py: CommunicatorError, exit 2
    with ending_every_rank_on_error(communicator):  # one rank's error ends every rank, never a hang
        try:
            config = TrainConfig(**{name: getattr(args, name) for name in TrainConfig.__dataclass_fields__})
            text = default_corpus() if args.text is None else Path(args.text)
            train(text, config, args.out, resume=args.resume, backend=args.backend, device=args.device,
                  write=tqdm.write, communicator=communicator)
        except BAD_INPUT as error:
            if communicator.size == 1:
                raise
            raise SystemExit(_refused("train", error)) from None  # every rank exits 2
    return 0


def _sample(args: argparse.Namespace) -> int:
    from xlstm.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(args.checkpoint, backend=args.backend, device=args.device)
    vocabulary = checkpoint.vocabulary
    prompt = args.prompt if args.prompt is not None else vocabulary.decode([0])
    generated = checkpoint.model.generate(vocabulary.encode(prompt), args.length, temperature=args.temperature,
                                          top_k=args.top_k, seed=args.seed)
    print(prompt + vocabulary.decode(generated))
    return 0


# One line of help per `train` flag; argparse appends each default.
_TRAIN_HELP = {
    "steps": "optimiser steps in all (a resumed run continues up to this many)",
    "batch_size": "rows of text trained on in parallel (under mpiexec: in all, split evenly among the ranks)",
    "window": "tokens per row per step (the truncated-BPTT length)",
    "embedding_size": "size of each token's embedding vector",
    "hidden_size": "units per layer",
    "num_layers": "stacked layers",
    "num_heads": "heads of each sLSTM and mLSTM layer (must divide --hidden-size)",
    "eval_every": "evaluate on the validation text every this many steps (and after the last)",
    "checkpoint_every": "save a checkpoint every this many steps (and after the last)",
    "seed": "seed of the initial weights, dropout masks and the sample",
    "dropout_keep_prob": "probability of keeping each candidate unit in training (1: no dropout)",
    "learning_rate": "the optimiser's step size",
    "clip_norm": "gradients are scaled down to at most this global norm",
    "validation_fraction": "the tail of the text held out for validation",
}


def _eval_tokens(value: str) -> int | None:
    """--eval-tokens: a positive integer, or 'all' (None)."""
    if value == "all":
        return None
    try:
        tokens = int(value)
    except ValueError:
        tokens = 0
    if tokens <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of tokens or 'all', got {value!r}")
    return tokens


def _selftest(args: argparse.Namespace) -> int:
    from xlstm.selftest import selftest_main

    return selftest_main(backend=args.backend, device=args.device, quick=args.quick)


def _add_selftest_parser(commands: Any) -> None:
    selftest = commands.add_parser("selftest", help="check this backend and device against the oracles "
                                                    "(under a minute); exit 0 only when all pass")
    selftest.add_argument("--backend", default=None, help="numpy (default), cupy, torch or array_api_strict")
    selftest.add_argument("--device", default=None, help="device of that backend, e.g. 0 for the first GPU")
    selftest.add_argument("--quick", action="store_true", help="a smaller grid of shapes (for tests)")
    selftest.set_defaults(run=_selftest)


def _add_train_parser(commands: Any) -> None:
    from xlstm.training import OPTIMIZERS, TrainConfig

    defaults = TrainConfig()
    train = commands.add_parser("train", help="train a character language model (defaults: ~2 minutes on 2 cores)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--text", default=None, help="UTF-8 text file, streamed into a token cache in --out "
                                                    "(default: a fixed 1 MB selection of the running Python's "
                                                    "standard-library source)")
    train.add_argument("--out", default="runs/charlm", help="run folder: checkpoint, token cache, metrics.jsonl, "
                                                            "loss curve")
    train.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    train.add_argument("--backend", default=None, help="numpy (default), cupy, torch or array_api_strict")
    train.add_argument("--device", default=None, help="device of that backend (default: its first)")
    integers = ("steps", "batch_size", "window", "embedding_size", "hidden_size", "num_layers", "num_heads",
                "eval_every", "checkpoint_every", "seed")
    for name in integers:
        train.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name),
                           help=_TRAIN_HELP[name])
    for name in ("dropout_keep_prob", "learning_rate", "clip_norm", "validation_fraction"):
        train.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name),
                           help=_TRAIN_HELP[name])
    train.add_argument("--eval-tokens", type=_eval_tokens, default=defaults.eval_tokens,
                       help="evaluate the first N tokens of the validation text (contiguous, state carried "
                            "across windows), or 'all'")
    train.add_argument("--cell", default=defaults.cell,
                       help="the layers' cells: lstm, slstm or mlstm, or one per layer separated by commas, "
                            "bottom first (e.g. mlstm,slstm with --num-layers 2)")
    train.add_argument("--layer-norm", action="store_true", help="layer-normalised LSTM cells")
    train.add_argument("--level", choices=("char", "word"), default=defaults.level,
                       help="tokens: characters, or whitespace-separated words")
    train.add_argument("--dtype", choices=("float32", "float64"), default=defaults.dtype,
                       help="floating-point type of the parameters")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer, help="update rule")
    train.set_defaults(run=_train)


def _add_sample_parser(commands: Any) -> None:
    sample = commands.add_parser("sample", help="generate text from a trained checkpoint",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sample.add_argument("checkpoint", help="a run folder (--out of train) or a checkpoint file")
    sample.add_argument("--prompt", default=None, help="text to continue (default: the vocabulary's first token)")
    sample.add_argument("--length", type=int, default=300, help="tokens to generate")
    sample.add_argument("--temperature", type=float, default=0.8,
                        help="divides the logits: below 1 is more conservative, above 1 more varied")
    sample.add_argument("--top-k", type=int, default=None, help="draw only among the K most likely tokens "
                                                                "(default: all)")
    sample.add_argument("--seed", type=int, default=None, help="seed of the draws (default: fresh each run)")
    sample.add_argument("--backend", default=None, help="numpy (default), cupy, torch or array_api_strict")
    sample.add_argument("--device", default=None, help="device of that backend (default: its first)")
    sample.set_defaults(run=_sample)


def build_parser() -> argparse.ArgumentParser:
    from xlstm import __version__

    parser = argparse.ArgumentParser(prog="python -m xlstm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"xlstm-array {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("backends", help="list the backends and whether each is usable here") \
        .set_defaults(run=_print_backends)
    walk = commands.add_parser("walkthrough", help="replay the article's forward pass, figure by figure")
    walk.add_argument("--backend", default=None, help="numpy (default), cupy, torch or array_api_strict")
    walk.add_argument("--device", default=None, help="device of that backend, e.g. 0 for the first GPU")
    walk.add_argument("--layer-norm", action="store_true", help="use the layer-normalised cell")
    walk.set_defaults(run=_walkthrough)
    _add_train_parser(commands)
    _add_sample_parser(commands)
    add_bench_parser(commands)
    _add_selftest_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    if hasattr(sys.stdout, "reconfigure"):  # the walkthrough prints σ, ⊙, ᵀ: never crash on them
        sys.stdout.reconfigure(errors="replace")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except BAD_INPUT as error:
        return _refused(args.command, error)


def _refused(command: str, error: Exception) -> int:
    """Bad input: say why, exit 2."""
    print(f"xlstm {command}: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
