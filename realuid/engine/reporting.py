"""Run reporting: the metrics log (JSONL) and the rich progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from realuid.io import atomic_write_text


def to_jsonable(value):
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


class MetricsLog:
    """``metrics.jsonl``: one JSON object per evaluation, each write atomic (temporary file + rename).

    Every :meth:`append` rewrites the whole file through
    :func:`~realuid.checkpoints.atomic_write_text` (a log holds one row
    per evaluation, so this stays cheap), so a kill leaves the old log or the
    new one, never a cut line. On resume, :meth:`truncate_after` drops rows
    written after the checkpoint being resumed (a killed run may have logged
    past it), so the log of a resumed run equals that of an uninterrupted one.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def _text(self) -> str:
        if not self.path.exists():
            return ""
        return "".join(json.dumps(r) + "\n" for r in self.rows())

    def append(self, row: dict) -> None:
        atomic_write_text(self.path, self._text() + json.dumps(to_jsonable(row)) + "\n")

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill (logs written before atomic appends)
                break
        return rows

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [r for r in self.rows() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def progress_bar(console: Console | None = None) -> Progress:
    """Step counter, bar, it/s, elapsed, ETA and a free-text field for losses."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        TextColumn("[cyan]{task.fields[rate]}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
        console=console or Console(stderr=True), refresh_per_second=4,
    )
