"""Resume: a run stopped at an arbitrary step (SIGKILL, SIGTERM, SIGINT) and resumed equals an uninterrupted one
bit for bit; resume falls back past damaged checkpoints, extends a finished run, finds its imports from any folder,
and refuses what does not fit (another seed, a recipe, another architecture).

The signal runs are real ``python -m realuid run`` subprocesses of the RealUID recipe (real data in the fake loss,
so the data stream's position matters) at toy scale. The reference run goes uninterrupted; the others are stopped
by SIGKILL, SIGTERM or SIGINT after a checkpoint appears (the first two are continued with ``--resume``). Compared:
every metrics.jsonl row (all keys but wall_time), every tensor of the final checkpoint (weights, EMA, both Adam
states, lr schedules, the three RNG streams, the data position) with ``torch.equal``, and the bytes of samples.npy.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import gin
import pytest
import torch

from helpers import ROOT, assert_same_run, bind_args, cli, realuid_process, rows, start_realuid, tiny_run
from realuid.checkpoints import checkpoint_step, checkpoints, load_checkpoint

RECIPE = "gin/realuid_fm_gmm.gin"
UID = "gin/uid_fm_gmm.gin"
STEPS = 160
BINDS = [f"TrainingLoop.steps = {STEPS}", "TrainingLoop.batch_size = 32",
         "DistillationTrainer.fake_steps = 2", "DistillationTrainer.warmup_steps = 20",
         "TrainingLoop.eval_every = 20", "TrainingLoop.eval_samples = 128",
         "TrainingLoop.checkpoint_every = 10", "TrainingLoop.keep_checkpoints = 3",
         "MLP.hidden = 32", "TrainingLoop.tensorboard = False"]

pytestmark = pytest.mark.usefixtures("one_thread", "from_repository_root")   # tests/conftest.py


# -- stopped by a signal, then resumed -------------------------------------------------------------------------------
def start(out: Path, *extra: str) -> subprocess.Popen:
    return start_realuid("run", RECIPE, "--out", str(out), "--no-progress", "--seed", "7", *bind_args(*BINDS),
                         *extra)


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
    partial = {name: rows(base / name) for name in names[1:]}
    loaded = {name: load_checkpoint(base / name / "checkpoints" / f"step_{step:08d}.pt")["step"]
              for name, step in stopped.items()}
    resumed = {name: start_realuid("run", "--resume", str(base / name), "--no-progress")
               for name in ("SIGKILL", "SIGTERM")}
    resumed = {name: (proc.communicate(timeout=120), proc.returncode) for name, proc in resumed.items()}
    return {"base": base, "seen": seen, "codes": codes, "outputs": outputs, "stopped": stopped,
            "partial": partial, "loaded": loaded, "resumed": resumed}


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(runs):
    base = runs["base"]
    assert runs["codes"]["SIGKILL"] == -signal.SIGKILL
    assert runs["seen"]["SIGKILL"] <= runs["stopped"]["SIGKILL"] < STEPS  # killed mid-run, after a checkpoint
    assert len(runs["partial"]["SIGKILL"]) < len(rows(base / "reference"))
    (stdout, stderr), code = runs["resumed"]["SIGKILL"]
    assert code == 0, stderr
    assert_same_run(base / "SIGKILL", base / "reference", STEPS)


@pytest.mark.slow
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


@pytest.mark.slow
def test_sigterm_then_resume_is_bit_identical(runs):
    (stdout, stderr), code = runs["resumed"]["SIGTERM"]
    assert code == 0, stderr
    assert_same_run(runs["base"] / "SIGTERM", runs["base"] / "reference", STEPS)


@pytest.mark.slow
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
            loop, _ = build(None, out=copy, resume=True, progress=False)
            loop.resume()
            assert loop.step == STEPS - 20
            if variant != "exact":
                loop.data.seed(12345)
            loop.fit()
            finals[variant] = copy
    finally:
        torch.set_num_threads(threads)
        gin.clear_config()
    assert_same_run(finals["exact"], runs["base"] / "reference", STEPS)
    with pytest.raises(AssertionError):
        assert_same_run(finals["data position lost"], runs["base"] / "reference", STEPS)


# -- resumed through the CLI ----------------------------------------------------------------------------------------
def test_resume_falls_back_past_a_corrupted_checkpoint_and_still_matches(tmp_path):
    reference, damaged = tmp_path / "reference", tmp_path / "damaged"
    assert tiny_run(RECIPE, reference)[0] == 0
    assert tiny_run(RECIPE, damaged)[0] == 0
    newest = checkpoints(damaged / "checkpoints")[-1]
    assert checkpoint_step(newest) == 30
    newest.write_bytes(newest.read_bytes()[:1000])  # a truncated write
    (damaged / "samples.npy").unlink()
    (damaged / "checkpoints" / ".step_00000040.pt.tmp999-1").write_bytes(b"half")  # a killed writer's leftover

    code, stdout, stderr = cli("run", "--resume", str(damaged), "--no-progress")
    assert code == 0, stderr
    assert f"skipping bad checkpoint: checkpoint {newest} is corrupted or truncated" in stderr
    assert "falling back to the previous good checkpoint" in stderr and "step_00000020.pt" in stderr
    assert rows(damaged) == rows(reference)
    assert (damaged / "samples.npy").read_bytes() == (reference / "samples.npy").read_bytes()
    a, b = load_checkpoint(newest), load_checkpoint(checkpoints(reference / "checkpoints")[-1])
    assert all(torch.equal(a["generator"][k], b["generator"][k]) for k in a["generator"])
    assert not list((damaged / "checkpoints").glob(".*tmp*"))
    assert len(json.loads((damaged / "run.json").read_text())["resumes"]) == 1


def test_resume_with_every_checkpoint_bad_is_a_clear_error(tmp_path):
    out = tmp_path / "run"
    assert tiny_run(RECIPE, out, steps=20)[0] == 0
    for p in checkpoints(out / "checkpoints"):
        p.write_bytes(b"x")
    code, _, stderr = cli("run", "--resume", str(out), "--no-progress")
    assert code == 2 and "no usable checkpoint" in stderr and "Traceback" not in stderr
    assert stderr.count("skipping bad checkpoint") == 2


def test_resume_refuses_another_seed_and_a_recipe(tmp_path):
    out = tmp_path / "run"
    assert tiny_run(RECIPE, out, steps=10)[0] == 0
    code, _, stderr = cli("run", "--resume", str(out), "--seed", "5")
    assert code == 2 and "--seed 5 differs from the seed 0" in stderr
    code, _, stderr = cli("run", RECIPE, "--resume", str(out))
    assert code == 2 and "a resumed run uses the config.gin" in stderr


def test_a_finished_run_extended_on_resume_equals_a_longer_run(tmp_path):
    """--resume with a new steps binding continues a finished run; config.gin and run.json record it."""
    short, long = tmp_path / "short", tmp_path / "long"
    code, stdout, stderr = tiny_run(UID, short, steps=20)
    assert code == 0, stderr
    assert "done" in stdout and "step=20" in stdout
    assert tiny_run(UID, long, steps=40)[0] == 0

    code, _, stderr = cli("run", "--resume", str(short), "--no-progress", "-b", "TrainingLoop.steps = 40")
    assert code == 0, stderr
    assert rows(short) == rows(long)
    a = load_checkpoint(checkpoints(short / "checkpoints")[-1])
    b = load_checkpoint(checkpoints(long / "checkpoints")[-1])
    assert a["step"] == b["step"] == 40
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in b["ema"])
    assert "TrainingLoop.steps = 40" in (short / "config.gin").read_text()
    meta = json.loads((short / "run.json").read_text())
    assert meta["resumes"][0]["bindings"] == ["TrainingLoop.steps = 40"] and meta["seed"] == 0


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    out = tmp_path / "run"
    code, _, stderr = tiny_run(UID, out, steps=10)
    assert code == 0, stderr
    before = (out / "metrics.jsonl").read_bytes(), (out / "samples.npy").read_bytes()
    code, stdout, stderr = cli("run", "--resume", str(out), "--no-progress")
    assert code == 0, stderr
    assert ((out / "metrics.jsonl").read_bytes(), (out / "samples.npy").read_bytes()) == before


IMPORTED = '''
from realuid.objectives import RealUID
from realuid.components import register


@register("objective")
class ImportedUID(RealUID):
    """Test only: RealUID under another name, registered by a .py file given to --import."""
'''


def resume_in(cwd: Path, run: Path, *binds: str):
    """`realuid run --resume RUN` in a fresh process started in ``cwd`` (so nothing is imported already)."""
    return realuid_process("run", "--resume", str(run), "--no-progress", *bind_args(*binds), cwd=cwd)


@pytest.mark.slow
def test_an_imported_py_file_is_found_when_resuming_from_another_folder(tmp_path, monkeypatch):
    """run.json records `--import my_components.py` as an absolute path: --resume works from any folder."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "my_components.py").write_text(IMPORTED)
    monkeypatch.chdir(project)
    code, _, stderr = tiny_run(str(ROOT / UID), Path("run"), "DistillationTrainer.objective = @ImportedUID()",
                               steps=10, extra=["--import", "my_components.py"])
    assert code == 0, stderr
    run_json = project / "run" / "run.json"
    recorded = json.loads(run_json.read_text())["imports"]
    assert recorded == [str(project.resolve() / "my_components.py")]
    assert Path(recorded[0]).is_absolute() and Path(recorded[0]).is_file()

    proc = resume_in(elsewhere, project / "run", "TrainingLoop.steps = 20")
    assert proc.returncode == 0, proc.stderr
    assert [r["step"] for r in rows(project / "run")] == [10, 20]
    assert json.loads(run_json.read_text())["imports"] == recorded

    # Calibration: the path as given (relative: what run.json used to record) is not found from another folder.
    meta = json.loads(run_json.read_text())
    run_json.write_text(json.dumps({**meta, "imports": ["my_components.py"]}))
    proc = resume_in(elsewhere, project / "run", "TrainingLoop.steps = 30")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: the run imports my_components.py, which does not exist (a relative path, "
                                  f"looked up from {elsewhere.resolve()})") and "Traceback" not in proc.stderr
    assert "--import path/to/my_components.py" in proc.stderr
    assert [r["step"] for r in rows(project / "run")] == [10, 20]

    # ... and --import with the file's path from there stands in for it; run.json records it absolute again.
    monkeypatch.chdir(elsewhere)
    code, _, stderr = cli("run", "--resume", str(project / "run"), "--no-progress",
                          "--import", "../project/my_components.py")
    assert code == 0, stderr
    assert json.loads(run_json.read_text())["imports"] == recorded


def test_resume_with_another_network_width_names_the_tensor_and_both_shapes(tmp_path):
    """A run folder resumed with --bind of another generator width: exit 2, the tensor and both shapes, no traceback.

    (The binding is scoped: config.gin sets ``generator/MLP.hidden``, which an unscoped ``MLP.hidden`` does not
    override.)"""
    out = tmp_path / "run"
    assert tiny_run(UID, out, steps=10)[0] == 0   # MLP.hidden = 16
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, stderr = cli("run", "--resume", str(out), "--no-progress", "-b", "generator/MLP.hidden = 24",
                          "-b", "TrainingLoop.steps = 20")
    assert code == 2, stderr
    assert stderr.startswith("error: the checkpoint's generator does not fit: its ") and "Traceback" not in stderr
    assert "has shape (16," in stderr and "this run's model has (24," in stderr, stderr
    assert f"Where: --resume {out} (step_00000010.pt)" in stderr and "Fix:" in stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "run.json"} == \
        {p: b for p, b in before.items() if p.name != "run.json"}
    # calibration: the same resume with the width it was written with goes on to step 20
    code, _, stderr = cli("run", "--resume", str(out), "--no-progress", "-b", "generator/MLP.hidden = 16",
                          "-b", "TrainingLoop.steps = 20")
    assert code == 0, stderr
    assert [r["step"] for r in rows(out)] == [10, 20]
