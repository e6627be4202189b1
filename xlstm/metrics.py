"""`metrics.jsonl`: one JSON object per line, per training step and per evaluation.

Training steps: {"step", "loss", "tokens_per_s", "learning_rate", "grad_norm"};
evaluations: {"step", "validation_loss", "bits_per_token"}. It is what people plot and tools read.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xlstm_backends.storage import write_atomically

FILE_NAME = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics log; a last line cut short by a crash is left out."""
    lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines) and not line.endswith("\n"):
                break
            raise ValueError(f"{path} line {number} is not a JSON object: {line[:80]!r}") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path} line {number} is not a metrics record with an integer 'step': {line[:80]!r}")
        records.append(record)
    return records


class MetricsLog:
    """Appends records to a run's metrics log, continuing it from a step (0: a fresh log)."""

    def __init__(self, path: str | Path, from_step: int) -> None:
        """Keep the records up to `from_step` (those a resumed checkpoint covers) and drop the rest,
        which an interrupted run wrote after its last checkpoint and which will be written again."""
        self.path = Path(path)
        kept = [r for r in read_metrics(self.path) if r["step"] <= from_step] if self.path.exists() else []
        write_atomically(self.path, lambda file: file.write("".join(_line(r) for r in kept).encode("utf-8")))
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, **record: Any) -> None:
        """Append one record and flush it, so the log is current even if the run is killed."""
        self._file.write(_line(record))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record) + "\n"
