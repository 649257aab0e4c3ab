"""metrics.jsonl: appended atomically, read up to a line cut by an older writer, cut back on resume."""

from __future__ import annotations

import os

import pytest
import torch

from realuid.engine.reporting import MetricsLog
from realuid.errors import UserError


def test_metrics_log_appends_atomically(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append({"step": 10, "loss": torch.tensor(0.5), "bad": float("nan")})
    log.append({"step": 20, "loss": 0.25})
    before = log.path.read_bytes()
    assert log.rows() == [{"step": 10, "loss": 0.5, "bad": "nan"}, {"step": 20, "loss": 0.25}]

    def broken_replace(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(UserError, match="cannot write .*metrics.jsonl"):
        log.append({"step": 30, "loss": 0.125})
    assert log.path.read_bytes() == before
    monkeypatch.undo()
    # a log cut mid-line (by an older, non-atomic writer) is read up to the cut and repaired on append
    log.path.write_text(before.decode() + '{"step": 30, "lo')
    assert [r["step"] for r in log.rows()] == [10, 20]
    log.truncate_after(10)
    assert [r["step"] for r in log.rows()] == [10]