"""Benchmarks of issue 9: training on big corpora, and the embedding gradient's cost.

    python scripts/bench_corpus.py big        # 60 MB of stdlib sources: `train --steps 2` under /usr/bin/time -v
    python scripts/bench_corpus.py huge       # a synthetic 1 GB text: tokenization rate and peak memory
    python scripts/bench_corpus.py embedding  # word level, default corpus: the embedding gradient's share of a step

Texts are written to a temporary folder and deleted afterwards. Wall times on a shared
machine vary with its load; the memory peaks do not.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path


def stdlib_text(path: Path, size: int) -> None:
    """Write about `size` bytes of the standard library's .py files (repeated when short) to `path`."""
    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    written = 0
    with path.open("w", encoding="utf-8") as out:
        while written < size:
            for source in sources:
                try:
                    text = source.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                out.write(text)
                written += len(text.encode("utf-8"))
                if written >= size:
                    break


def timed(command: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak resident MB, output) of a command run under /usr/bin/time -v."""
    result = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, check=True)
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", result.stderr).group(1)
    seconds = sum(float(part) * 60 ** k for k, part in enumerate(reversed(wall.split(":"))))
    return seconds, peak_kb / 1024, result.stdout


def train_big(megabytes: int, folder: Path) -> None:
    text = folder / "big.txt"
    stdlib_text(text, megabytes * 10**6)
    command = [sys.executable, "-m", "xlstm", "train", "--text", str(text), "--steps", "2", "--out",
               str(folder / "run")]
    wall, peak, output = timed(command)
    print(next(line for line in output.splitlines() if line.startswith("validation:")))
    print(f"{megabytes} MB corpus, train --steps 2: wall {wall:.1f} s, peak {peak:.0f} MB (targets: 60 s, 400 MB)")


def tokenize_huge(gigabytes: float, folder: Path) -> None:
    text = folder / "huge.txt"
    stdlib_text(text, int(gigabytes * 10**9))
    size = text.stat().st_size
    script = ("import sys, time; from xlstm.corpus import Corpus; t = time.perf_counter(); "
              "c = Corpus.from_file(sys.argv[1], 'char', sys.argv[2], write=lambda s: None); "
              "print(time.perf_counter() - t, len(c.ids))")
    wall, peak, output = timed([sys.executable, "-c", script, str(text), str(folder / "run")])
    seconds, tokens = output.split()
    print(f"tokenization of {size / 1e6:,.0f} MB ({int(tokens):,} characters): {seconds[:5]} s, "
          f"{size / 1e6 / float(seconds):.0f} MB/s over both passes; peak {peak:.0f} MB")
    wall, peak, _ = timed([sys.executable, "-m", "xlstm", "train", "--text", str(text), "--steps", "2",
                           "--out", str(folder / "run")])
    print(f"train --steps 2 on it (token cache reused): wall {wall:.1f} s, peak {peak:.0f} MB (target 500 MB)")


def embedding_share(repetitions: int) -> None:
    """Time a word-level step and its embedding gradient, the one-hot product against the scatter-add."""
    from xlstm_backends import get_backend
    from xlstm_backends.library import Library
    from xlstm.corpus import Corpus
    from xlstm.data import BatchStream, default_corpus
    from xlstm.models import CharLM

    backend = get_backend("numpy")
    corpus = Corpus.from_text(default_corpus(), "word")
    inputs, targets = BatchStream(corpus.ids, 32, 64, backend=backend).window(0)
    model = CharLM(len(corpus.vocabulary), hidden_size=192, num_layers=1, seed=0, backend=backend)
    d_embedded = backend.xp.ones((32 * 64, model.embedding_size), dtype=model.dtype)
    flat_ids = backend.xp.reshape(inputs, (-1,))
    library = backend.library
    ways = {"one-hot product (before)": lambda: Library.scatter_add_rows(library, model.vocab_size, flat_ids,
                                                                          d_embedded),
            "scatter-add (after)": lambda: library.scatter_add_rows(model.vocab_size, flat_ids, d_embedded),
            "whole step (after)": lambda: model.loss_and_grads(inputs, targets)}
    best = {name: float("inf") for name in ways}
    for _ in range(repetitions):  # alternate, so a busy moment on the machine hits all alike
        for name, run in ways.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    step_after = best["whole step (after)"]
    step_before = step_after - best["scatter-add (after)"] + best["one-hot product (before)"]
    print(f"word level, default corpus: V = {model.vocab_size:,}, batch 32 x 64 (best of {repetitions})")
    for name, seconds in best.items():
        print(f"  {name:<26} {seconds * 1e3:8.2f} ms")
    print(f"  embedding gradient's share of a step: before {best['one-hot product (before)'] / step_before:.0%}, "
          f"after {best['scatter-add (after)'] / step_after:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=("big", "huge", "embedding"))
    parser.add_argument("--megabytes", type=int, default=60, help="size of the 'big' corpus")
    parser.add_argument("--gigabytes", type=float, default=1.0, help="size of the 'huge' corpus")
    parser.add_argument("--repetitions", type=int, default=10, help="timings per variant ('embedding')")
    args = parser.parse_args()
    if args.task == "embedding":
        embedding_share(args.repetitions)
        return
    with tempfile.TemporaryDirectory(prefix="xlstm-bench-corpus-") as folder:
        (train_big if args.task == "big" else tokenize_huge)(
            args.megabytes if args.task == "big" else args.gigabytes, Path(folder))


if __name__ == "__main__":
    main()
