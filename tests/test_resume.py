"""Exact resume (issue 8): a run killed at an arbitrary step and resumed equals an uninterrupted one, bit for bit.

Every run here is a real ``python -m realuid run`` subprocess of the RealUID
recipe (real data in the fake loss, so the data stream's position matters) at
toy scale. The reference run goes uninterrupted; the others are stopped by
SIGKILL, SIGTERM or SIGINT after a checkpoint appears (the first two are
continued with ``--resume``). Compared: every metrics.jsonl row (all keys but wall_time),
every tensor of the final checkpoint (weights, EMA, both Adam states, lr
schedules, the three RNG streams, the data position) with ``torch.equal``,
and the bytes of samples.npy.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import gin
import pytest
import torch

from realuid.checkpoints import checkpoint_step, checkpoints, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
STEPS = 160
BINDS = [f"DistillationTrainer.steps = {STEPS}", "DistillationTrainer.batch_size = 32",
         "DistillationTrainer.fake_steps = 2", "DistillationTrainer.warmup_steps = 20",
         "DistillationTrainer.eval_every = 20", "DistillationTrainer.eval_samples = 128",
         "DistillationTrainer.checkpoint_every = 10", "DistillationTrainer.keep_checkpoints = 3",
         "MLP.hidden = 32", "DistillationTrainer.tensorboard = False"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start(out: Path, *extra: str) -> subprocess.Popen:
    binds = [a for b in BINDS for a in ("-b", b)]
    cmd = [sys.executable, "-m", "realuid", "run", "gin/realuid_fm_gmm.gin", "--out", str(out), "--no-progress",
           "--seed", "7", *binds, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc: subprocess.Popen, out: Path, at_least: int, timeout: float = 60.0) -> int:
    """Poll until a checkpoint of step >= at_least exists; returns its step (fails if the run ended first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = [checkpoint_step(p) for p in checkpoints(out / "checkpoints")]
        if steps and max(steps) >= at_least:
            return max(steps)
        assert proc.poll() is None, f"the run ended before step {at_least}: {proc.communicate()}"
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("no checkpoint appeared in time")


def rows_without_wall_time(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("wall_time")
    return rows


def assert_same_tensors(a, b, where="state"):
    """Recursive equality: tensors with torch.equal (dtype and shape too), everything else with ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def final_state(out: Path) -> dict:
    last = checkpoints(out / "checkpoints")[-1]
    assert checkpoint_step(last) == STEPS
    state = load_checkpoint(last)
    state.pop("wall_time")
    return state


def assert_same_run(out: Path, reference: Path) -> None:
    assert rows_without_wall_time(out) == rows_without_wall_time(reference)
    assert_same_tensors(final_state(out), final_state(reference))
    assert (out / "samples.npy").read_bytes() == (reference / "samples.npy").read_bytes()


def kill_after_checkpoint(proc: subprocess.Popen, out: Path, signum: int, at_least: int) -> int:
    """Send ``signum`` once a checkpoint of step >= at_least exists, a random 0-30 ms later; returns that step."""
    step = wait_for_checkpoint(proc, out, at_least)
    time.sleep(random.uniform(0, 0.03))
    assert proc.poll() is None, "the run finished before it could be stopped"
    proc.send_signal(signum)
    return step


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted reference and three runs stopped by SIGKILL, SIGTERM and SIGINT, side by side.

    The SIGKILL and SIGTERM runs are then resumed (in parallel); the tests compare.
    """
    base = tmp_path_factory.mktemp("resume")
    names = ("reference", "SIGKILL", "SIGTERM", "SIGINT")
    procs = {name: start(base / name) for name in names}
    # arbitrary stopping points: after the 3rd to 8th checkpoint (of 16), plus 0-30 ms
    points = {name: 10 * random.randint(3, 8) for name in names[1:]}
    seen, failures = {}, []

    def stop(name):
        try:
            seen[name] = kill_after_checkpoint(procs[name], base / name, getattr(signal, name), points[name])
        except BaseException as err:  # noqa: BLE001 (re-raised in the main thread)
            failures.append(err)

    threads = [threading.Thread(target=stop, args=(name,)) for name in names[1:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        for proc in procs.values():
            proc.kill()
        raise failures[0]
    outputs = {name: proc.communicate(timeout=120) for name, proc in procs.items()}
    codes = {name: proc.returncode for name, proc in procs.items()}
    assert codes["reference"] == 0, outputs["reference"]
    stopped = {name: max(checkpoint_step(p) for p in checkpoints(base / name / "checkpoints"))
               for name in names[1:]}
    partial = {name: rows_without_wall_time(base / name) for name in names[1:]}
    loaded = {name: load_checkpoint(base / name / "checkpoints" / f"step_{step:08d}.pt")["step"]
              for name, step in stopped.items()}
    resumed = {name: subprocess.Popen([sys.executable, "-m", "realuid", "run", "--resume", str(base / name),
                                       "--no-progress"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for name in ("SIGKILL", "SIGTERM")}
    resumed = {name: (proc.communicate(timeout=120), proc.returncode) for name, proc in resumed.items()}
    return {"base": base, "seen": seen, "codes": codes, "outputs": outputs, "stopped": stopped,
            "partial": partial, "loaded": loaded, "resumed": resumed}


def test_sigkill_then_resume_is_bit_identical(runs):
    base = runs["base"]
    assert runs["codes"]["SIGKILL"] == -signal.SIGKILL
    assert runs["seen"]["SIGKILL"] <= runs["stopped"]["SIGKILL"] < STEPS  # killed mid-run, after a checkpoint
    assert len(runs["partial"]["SIGKILL"]) < len(rows_without_wall_time(base / "reference"))
    (stdout, stderr), code = runs["resumed"]["SIGKILL"]
    assert code == 0, stderr
    assert_same_run(base / "SIGKILL", base / "reference")


@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_sigterm_sigint_stop_cleanly_after_writing_a_checkpoint(runs, name, code):
    stdout, stderr = runs["outputs"][name]
    assert runs["codes"][name] == code, stderr
    step = runs["stopped"][name]
    assert f"{name} received" in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert f"stopped cleanly at step {step}" in stderr
    assert runs["seen"][name] <= step < STEPS
    # the checkpoint is of the step the run stopped at, and loads
    assert runs["loaded"][name] == step


def test_sigterm_then_resume_is_bit_identical(runs):
    (stdout, stderr), code = runs["resumed"]["SIGTERM"]
    assert code == 0, stderr
    assert_same_run(runs["base"] / "SIGTERM", runs["base"] / "reference")


def test_the_comparison_catches_a_missing_piece_of_state(runs, tmp_path):
    """Calibration: resumed in-process from the reference's step-140 checkpoint, the run matches the reference;
    with the data stream's position not restored it does not, and assert_same_run says so."""
    from realuid.engine.runner import build

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1)
    try:
        finals = {}
        for variant in ("exact", "data position lost"):
            copy = tmp_path / variant.replace(" ", "_")
            shutil.copytree(runs["base"] / "reference", copy)
            for p in checkpoints(copy / "checkpoints"):
                if checkpoint_step(p) > STEPS - 20:
                    p.unlink()
            trainer, _ = build(None, out=copy, resume=True, progress=False)
            trainer.resume()
            assert trainer.step == STEPS - 20
            if variant != "exact":
                trainer.data.seed(12345)
            trainer.fit()
            finals[variant] = copy
    finally:
        torch.set_num_threads(threads)
        gin.clear_config()
    assert_same_run(finals["exact"], runs["base"] / "reference")
    with pytest.raises(AssertionError):
        assert_same_run(finals["data position lost"], runs["base"] / "reference")
