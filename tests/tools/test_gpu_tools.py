"""The CIFAR-10 GPU tools: their arithmetic, and their whole logic on CPU with smoke settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import typer

from helpers import ROOT, SHARDS, needs_shards

sys.path.insert(0, str(ROOT / "tools"))

import convergence_cifar  # noqa: E402


def test_grid_points_parse_and_bad_ones_say_the_format():
    assert convergence_cifar.parse_grid("0.94:0.96,0.92:0.94") == [(0.94, 0.96), (0.92, 0.94)]
    with pytest.raises(typer.BadParameter, match="ALPHA:BETA"):
        convergence_cifar.parse_grid("0.94")


def test_speedup_times_every_run_to_uids_final_fd_by_one_rule():
    def run(fds):
        curve = [{"step": 10 * (i + 1), "fd": fd} for i, fd in enumerate(fds)]
        return {"curve": curve, "final_fd": fds[-1]}

    # UID dips below its final FD once early (noise): it is timed by the same rule as the others
    runs = {"UID": run([9.0, 5.0, 3.9, 4.5, 4.0]), "fast": run([8.0, 3.5, 2.0]), "never": run([9.0, 8.0])}
    convergence_cifar.add_speedups(runs)
    assert runs["UID"]["steps_to_uid_final_fd"] == 30
    assert runs["fast"]["steps_to_uid_final_fd"] == 20 and runs["fast"]["speedup_in_steps"] == 1.5
    assert runs["never"]["steps_to_uid_final_fd"] is None and runs["never"]["speedup_in_steps"] is None
    assert runs["UID"]["speedup_in_steps"] == 1.0


@pytest.mark.slow
@needs_shards
def test_speedrun_runs_every_phase_and_reports_the_goal(tmp_path):
    env = {**os.environ, "REALUID_CIFAR10": str(SHARDS), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "tools/speedrun_cifar.py", "--smoke", "--out", str(tmp_path / "s")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "s" / "speedrun.json").read_text())
    phases = {r["phase"]: r for r in result["phases"]}
    assert set(phases) == {"fd_classifier", "teacher", "student", "eval_teacher_nfe1", "eval_teacher_nfe2",
                           "eval_uid_nfe1"}
    assert all(r["rc"] == 0 for r in phases.values()), phases
    assert result["steps"]["teacher"] > 0 and result["steps"]["student"] > 0
    fds = [result["fd"][k]["fd_classifier"] for k in ("teacher_nfe1", "teacher_nfe2", "uid_nfe1")]
    assert all(fd >= 0 for fd in fds), fds
    assert result["goal"]["met"] is None   # no NFE-100 evaluation in the smoke settings: no verdict
    assert "goal met = None" in proc.stdout


def test_ddp_throughput_counts_the_warm_part_and_every_update():
    import bench_ddp

    rows = [{"step": 10, "wall_time": 5.0}, {"step": 20, "wall_time": 6.0}, {"step": 30, "wall_time": 7.0}]
    assert bench_ddp.images_per_second(rows, global_batch=64, updates_per_step=6) == 20 * 64 * 6 / 2.0
    assert bench_ddp.images_per_second(rows[:1], 64, 6) is None   # one row: no interval to time


@pytest.mark.slow
@pytest.mark.torchrun
def test_ddp_benchmark_runs_one_and_two_processes_on_cpu(tmp_path):
    proc = subprocess.run([sys.executable, "tools/bench_ddp.py", "--smoke", "--out", str(tmp_path / "d")], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "d" / "bench_ddp.json").read_text())
    assert [(r["procs"], r["mode"], r["global_batch"], r["rc"]) for r in result["results"]] == \
        [(1, "single", 64, 0), (2, "ddp", 128, 0), (2, "fsdp", 128, 0)]
    assert all(r["images_per_s"] > 0 and r["efficiency"] > 0 for r in result["results"])
    assert result["results"][0]["efficiency"] == 1.0
    for r in result["results"][1:]:   # measured against two independent processes of the same compute
        assert len(r["alone_step_s"]) == 2 and all(t > 0 for t in r["alone_step_s"])
        assert r["exposed_comm_s"] == pytest.approx(r["step_s"] - sum(r["alone_step_s"]) / 2)


def test_gpu_turn_waits_for_the_other_processes_then_holds_the_gpu_alone(tmp_path):
    import fcntl

    import bench_step

    (tmp_path / "ready-other").touch()          # the other process has compiled
    with bench_step.gpu_turn(bench_step.parse_share(f"{tmp_path}:2"), wait_s=30) as waited:
        assert waited < 5
        with open(tmp_path / "lock") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)   # a second process cannot time now
    with open(tmp_path / "lock") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)        # released after the timing
    with bench_step.gpu_turn((tmp_path / "alone", 2), wait_s=0.5) as waited:
        assert 0.5 <= waited < 5                 # a peer that never gets ready costs at most the wait


@needs_shards
def test_step_benchmark_times_every_step_kind_and_samples_on_cpu(tmp_path):
    env = {**os.environ, "REALUID_CIFAR10": str(SHARDS), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "tools/bench_step.py", "--precision", "fp32", "--warmup", "1",
                           "--repeats", "1", "-b", "include 'gin/smoke/smoke.gin'",
                           "-b", "CheckpointTeacher.allow_random_init = True", "--share-gpu", f"{tmp_path}:1",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    setting = json.loads(out.read_text())["settings"][0]
    assert set(setting["steps"]) == {"teacher step", "fake step", "generator step", "cycle (K=2)"}
    assert all(r["ms"] > 0 and r["gflop"] > 0 for r in setting["steps"].values())
    assert setting["sampling_ok"] is True and setting["cuda_graphs"] is False and setting["compile_times"] is None
    assert setting["teacher_first_step_s"] > 0 and setting["waited_for_gpu_s"] < 60


@pytest.mark.parametrize("args, message", [(["--share-gpu", "runs/share"], "give DIR:N"),
                                           (["--share-gpu", "runs/share:0"], "give DIR:N"),
                                           (["--teacher-batch", "0"], "batch size >= 1")])
def test_step_benchmark_refuses_bad_options_before_building_anything(args, message, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "tools/bench_step.py", *args, "--out", str(out)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stdout + proc.stderr
    assert not out.exists()
