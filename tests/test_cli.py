"""`realuid run` behaviours around resume and the run folder (issue 8)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from realuid.cli import app
from realuid.checkpoints import checkpoints, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "gin/uid_fm_gmm.gin"
SMALL = ["DistillationTrainer.batch_size = 32", "DistillationTrainer.fake_steps = 2",
         "DistillationTrainer.warmup_steps = 5", "DistillationTrainer.lr_decay = 'constant'",
         "DistillationTrainer.eval_every = 10", "DistillationTrainer.eval_samples = 128",
         "DistillationTrainer.checkpoint_every = 10", "MLP.hidden = 16"]


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def bind_args(*binds: str) -> list[str]:
    return [a for b in binds for a in ("-b", b)]


def rows(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "wall_time"}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_finished_run_extended_on_resume_equals_a_longer_run(tmp_path):
    """--resume with a new steps binding continues a finished run; config.gin and run.json record it."""
    short, long = tmp_path / "short", tmp_path / "long"
    code, stdout, stderr = cli("run", RECIPE, "--out", str(short), "--no-progress",
                               *bind_args(*SMALL, "DistillationTrainer.steps = 20"))
    assert code == 0, stderr
    assert "done" in stdout and "step=20" in stdout
    assert cli("run", RECIPE, "--out", str(long), "--no-progress",
               *bind_args(*SMALL, "DistillationTrainer.steps = 40"))[0] == 0

    code, _, stderr = cli("run", "--resume", str(short), "--no-progress", "-b", "DistillationTrainer.steps = 40")
    assert code == 0, stderr
    assert rows(short) == rows(long)
    a = load_checkpoint(checkpoints(short / "checkpoints")[-1])
    b = load_checkpoint(checkpoints(long / "checkpoints")[-1])
    assert a["step"] == b["step"] == 40
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in b["ema"])
    assert "DistillationTrainer.steps = 40" in (short / "config.gin").read_text()
    meta = json.loads((short / "run.json").read_text())
    assert meta["resumes"][0]["bindings"] == ["DistillationTrainer.steps = 40"] and meta["seed"] == 0


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    out = tmp_path / "run"
    code, _, stderr = cli("run", RECIPE, "--out", str(out), "--no-progress",
                          *bind_args(*SMALL, "DistillationTrainer.steps = 10"))
    assert code == 0, stderr
    before = (out / "metrics.jsonl").read_bytes(), (out / "samples.npy").read_bytes()
    code, stdout, stderr = cli("run", "--resume", str(out), "--no-progress")
    assert code == 0, stderr
    assert ((out / "metrics.jsonl").read_bytes(), (out / "samples.npy").read_bytes()) == before


def test_recipe_includes_resolve_from_another_folder(tmp_path, monkeypatch):
    """`include 'gin/base/...'` works when realuid runs outside the repository (recipe folder's parent searched)."""
    monkeypatch.chdir(tmp_path)
    code, _, stderr = cli("run", str(ROOT / RECIPE), "--out", "run", "--no-progress",
                          *bind_args(*SMALL, "DistillationTrainer.steps = 2"))
    assert code == 0, stderr
    assert (tmp_path / "run" / "samples.npy").is_file()


def test_messages_with_brackets_are_printed_verbatim(tmp_path):
    """Rich markup must not eat '[...]' in a message (e.g. the fix '[[x, y], ...]')."""
    code, _, stderr = cli("run", RECIPE, "--out", str(tmp_path / "out"), "-b", "GaussianMixture.means = 'abc'")
    assert code == 2 and "bind GaussianMixture.means = [[x, y], ...]" in stderr


def test_run_folder_contents(tmp_path):
    out = tmp_path / "run"
    code, _, stderr = cli("run", RECIPE, "--out", str(out), "--no-progress", "--seed", "3",
                          *bind_args(*SMALL, "DistillationTrainer.steps = 10"))
    assert code == 0, stderr
    names = sorted(p.name for p in out.iterdir() if p.name != "tensorboard")  # tensorboard: when installed
    assert names == ["checkpoints", "config.gin", "metrics.jsonl", "run.json", "samples.npy", "samples.png"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000010.pt", "step_00000010.pt.sha256"]
    assert json.loads((out / "run.json").read_text())["seed"] == 3


IMPORTED = '''
from realuid.objectives import RealUID
from realuid.components import register


@register("objective")
class ImportedUID(RealUID):
    """Test only: RealUID under another name, registered by a .py file given to --import."""
'''


def resume_in(cwd: Path, run: Path, *binds: str) -> subprocess.CompletedProcess:
    """`realuid run --resume RUN` in a fresh process started in ``cwd`` (so nothing is imported already)."""
    return subprocess.run([sys.executable, "-m", "realuid", "run", "--resume", str(run), "--no-progress",
                           *bind_args(*binds)], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_an_imported_py_file_is_found_when_resuming_from_another_folder(tmp_path, monkeypatch):
    """run.json records `--import my_components.py` as an absolute path: --resume works from any folder."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "my_components.py").write_text(IMPORTED)
    monkeypatch.chdir(project)
    code, _, stderr = cli("run", str(ROOT / RECIPE), "--out", "run", "--no-progress", "--import", "my_components.py",
                          *bind_args(*SMALL, "DistillationTrainer.steps = 10",
                                     "DistillationTrainer.objective = @ImportedUID()"))
    assert code == 0, stderr
    run_json = project / "run" / "run.json"
    recorded = json.loads(run_json.read_text())["imports"]
    assert recorded == [str(project.resolve() / "my_components.py")]
    assert Path(recorded[0]).is_absolute() and Path(recorded[0]).is_file()

    proc = resume_in(elsewhere, project / "run", "DistillationTrainer.steps = 20")
    assert proc.returncode == 0, proc.stderr
    assert [r["step"] for r in rows(project / "run")] == [10, 20]
    assert json.loads(run_json.read_text())["imports"] == recorded

    # Calibration: the path as given (relative: what run.json used to record) is not found from another folder.
    meta = json.loads(run_json.read_text())
    run_json.write_text(json.dumps({**meta, "imports": ["my_components.py"]}))
    proc = resume_in(elsewhere, project / "run", "DistillationTrainer.steps = 30")
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
