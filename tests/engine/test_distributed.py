"""Data parallelism on CPU: two processes under torchrun, the replicas stay equal, rank 0 alone writes the run folder.

(Every rank draws from the same streams: tests/engine/test_data_parallel.py shows 2 processes x B/2 == 1 x B.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import ROOT, SUBPROCESS_ENV
from realuid.checkpoints import checkpoints, load_checkpoint


@pytest.mark.slow
@pytest.mark.torchrun
def test_two_process_data_parallel_run_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "realuid",
               "run", str(ROOT / "gin" / "uid_fm_gmm.gin"), "--out", str(out), "--no-progress",
               "-b", "TrainingLoop.steps = 4", "-b", "TrainingLoop.batch_size = 64",
               "-b", "TrainingLoop.eval_every = 2", "-b", "TrainingLoop.eval_samples = 200",
               "-b", "TrainingLoop.checkpoint_every = 2"]
    result = subprocess.run(command, cwd=ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas differ" not in result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]                     # rank 0 alone writes
    state = load_checkpoint(checkpoints(out / "checkpoints")[-1])
    assert state["meta"]["world_size"] == 2
