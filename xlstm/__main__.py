"""`python -m xlstm COMMAND`: the command-line entry point (argument parsing only)."""
from __future__ import annotations

import argparse
import sys

from backends import BackendError, LIBRARIES, available_backends


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m xlstm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("backends", help="list the backends and whether each is usable here") \
        .set_defaults(run=_print_backends)
    walk = commands.add_parser("walkthrough", help="replay the article's forward pass, figure by figure")
    walk.add_argument("--backend", default=None, help="numpy (default), cupy, torch or array_api_strict")
    walk.add_argument("--device", default=None, help="device of that backend, e.g. 0 for the first GPU")
    walk.add_argument("--layer-norm", action="store_true", help="use the layer-normalised cell")
    walk.set_defaults(run=_walkthrough)
    return parser


def main(argv: list[str] | None = None) -> int:
    if hasattr(sys.stdout, "reconfigure"):  # the walkthrough prints σ, ⊙, ᵀ: never crash on them
        sys.stdout.reconfigure(errors="replace")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except BackendError as error:
        print(f"xlstm: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
