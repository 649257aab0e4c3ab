"""``realuid export`` and export folders through the CLI; the headline command on a fresh machine (no runs/ yet).

Every bad input exits 2 with one paragraph (``error: WHAT. Where: WHERE. Fix:
HOW.``), no traceback, and nothing half-written in ``--out``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from helpers import single_thread
from realuid.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
SHARDS = Path(os.environ.get("REALUID_CIFAR10") or ROOT.parent / "shared" / "data" / "cifar10")
if not (SHARDS / "train-000000.tar.gz").is_file():
    SHARDS = Path("/work/shared/data/cifar10")
needs_shards = pytest.mark.skipif(not (SHARDS / "train-000000.tar.gz").is_file(), reason="no CIFAR-10 shards")
GMM = ["TrainingLoop.steps = 4", "TrainingLoop.batch_size = 32", "TrainingLoop.eval_every = 2",
       "TrainingLoop.eval_samples = 64", "TrainingLoop.checkpoint_every = 2", "DistillationTrainer.fake_steps = 2",
       "DistillationTrainer.warmup_steps = 0", "MLP.hidden = 16"]


def cli(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def assert_user_error(code: int, stderr: str, *fragments: str) -> None:
    text = " ".join(stderr.split())
    assert code == 2, stderr
    assert text.startswith("error:") and "Where:" in text and "Fix:" in text, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in text, (fragment, text)


@pytest.fixture(scope="module")
def gmm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gmm_cli")
    with single_thread():
        code, out, err = cli("run", ROOT / "gin" / "realuid_fm_gmm.gin", "--out", tmp / "run", "--no-progress",
                             *[a for b in GMM for a in ("-b", b)])
        assert code == 0, err
        code, out, err = cli("export", tmp / "run", "--out", tmp / "export")
        assert code == 0, err
    assert "wrote" in out and "realuid.load_generator" in " ".join(out.split())
    return tmp


def test_export_writes_safetensors_and_plain_json_only(gmm):
    assert sorted(p.name for p in (gmm / "export").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((gmm / "export" / "config.json").read_text())
    assert config["kind"] == "student" and config["backbone"]["name"] == "MLP"
    assert set(load_file(str(gmm / "export" / "model.safetensors"))) == set(
        torch.load(sorted((gmm / "run" / "checkpoints").glob("*.pt"))[-1], weights_only=True)["generator"])


@pytest.mark.parametrize("case", ["not-a-run", "missing", "no-checkpoint", "an-export", "out-taken",
                                  "overwrite-non-export", "out-is-a-file"])
def test_export_bad_inputs_exit_2_and_write_nothing(gmm, tmp_path, case):
    run, out = gmm / "run", tmp_path / "out"
    expect = {"not-a-run": "is not a run folder (it has no checkpoints/ folder)",
              "missing": "does not exist",
              "no-checkpoint": "has no usable checkpoint",
              "an-export": "is an export folder, not a run folder",
              "out-taken": "already exists and is not empty",
              "overwrite-non-export": "--overwrite would delete",
              "out-is-a-file": "is an existing file, not a folder"}[case]
    extra = []
    if case == "not-a-run":
        run = tmp_path / "empty"
        run.mkdir()
    elif case == "missing":
        run = tmp_path / "nowhere" / "run"
    elif case == "no-checkpoint":
        run = tmp_path / "fresh"
        (run / "checkpoints").mkdir(parents=True)
        shutil.copy(gmm / "run" / "config.gin", run / "config.gin")
    elif case == "an-export":
        run = gmm / "export"
    elif case in ("out-taken", "overwrite-non-export"):
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        extra = ["--overwrite"] if case == "overwrite-non-export" else []
    elif case == "out-is-a-file":
        out.write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = cli("export", run, "--out", out, *extra)
    assert_user_error(code, err, expect)
    assert sorted(p.name for p in tmp_path.iterdir()) == before   # no --out, no temporary folder
    if out.is_dir():
        assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("case, expect", [
    ("wrong-shape", "the tensor 'network.net.0.weight' in {dir}/model.safetensors has shape (4, 4), but the "
                    "generator built from config.json (MLP) expects (16, 34)"),
    ("missing-tensor", "{dir}/model.safetensors lacks the tensor 'network.net.0.bias'"),
    ("unreadable", "{dir}/model.safetensors cannot be read as a safetensors file"),
    ("no-config", "{dir} has no config.json beside its model.safetensors"),
    ("bad-version", "{dir}/config.json has format version 2; realuid"),
    ("changed", "{dir}/model.safetensors was changed after it was exported"),
    ("not-json", "{dir}/config.json is not valid JSON"),
    ("bad-backbone", "{dir}/config.json names the backbone 'MLPP', and no registered component is called so"),
])
def test_sample_refuses_a_tampered_export(gmm, tmp_path, case, expect):
    folder = tmp_path / "export"
    shutil.copytree(gmm / "export", folder)
    tensors = load_file(str(folder / "model.safetensors"))
    if case == "wrong-shape":
        tensors["network.net.0.weight"] = torch.zeros(4, 4)
        save_file(tensors, str(folder / "model.safetensors"))
    elif case == "missing-tensor":
        del tensors["network.net.0.bias"]
        save_file(tensors, str(folder / "model.safetensors"))
    elif case == "unreadable":
        (folder / "model.safetensors").write_text("not tensors")
    elif case == "no-config":
        (folder / "config.json").unlink()
    elif case == "changed":
        tensors["network.net.0.bias"] += 1
        save_file(tensors, str(folder / "model.safetensors"))
    elif case == "not-json":
        (folder / "config.json").write_text('{"format": "realuid-export",')
    elif case in ("bad-version", "bad-backbone"):
        config = json.loads((folder / "config.json").read_text())
        if case == "bad-version":
            config["format_version"] = 2
        else:
            config["backbone"]["name"] = "MLPP"
        (folder / "config.json").write_text(json.dumps(config))
    code, _, err = cli("sample", folder, "--out", tmp_path / "samples", "--num", "4", "--device", "cpu")
    assert_user_error(code, err, expect.format(dir=folder))
    assert not (tmp_path / "samples").exists()


def test_sample_reads_a_good_export_as_far_as_its_shape(gmm, tmp_path):
    """Calibration of the cases above: the intact export loads, and only its (vector) samples are refused."""
    code, _, err = cli("sample", gmm / "export", "--out", tmp_path / "samples", "--num", "4", "--device", "cpu")
    assert_user_error(code, err, "makes samples of shape (2,), not images")


# -- the headline command on a fresh machine -------------------------------------------------------------------------
@needs_shards
def test_a_missing_teacher_stops_with_the_commands_that_train_or_import_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REALUID_CIFAR10", str(SHARDS))
    code, _, err = cli("run", ROOT / "gin" / "realuid_fm_cifar.gin", "--no-progress", "-b", "CIFAR10Shards.limit = 64",
                       "-b", "UNet.channel_mult = (1, 2)")
    assert_user_error(code, err, "no trained model called 'fm_cifar_teacher'",
                      "train it with `realuid run gin/fm_cifar_teacher.gin --out runs/fm_cifar_teacher`",
                      "`realuid import torchcfm CKPT.pt --recipe gin/fm_cifar_teacher.gin --out "
                      "runs/fm_cifar_teacher`")
    assert not (tmp_path / "runs").exists()


@needs_shards
@pytest.mark.parametrize("case", ["broken-recipe", "missing-recipe"])
def test_a_smoke_teacher_that_cannot_be_trained_says_why(tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REALUID_CIFAR10", str(SHARDS))
    recipe = tmp_path / "teacher.gin"
    if case == "broken-recipe":
        recipe.write_text("MatchingTrainer.lr == 2\n")
    code, _, err = cli("run", ROOT / "gin" / "realuid_fm_cifar.gin", "--smoke", "--no-progress", "--out",
                       tmp_path / "student", "-b", f"CheckpointTeacher.recipe = '{recipe}'")
    if case == "broken-recipe":
        note, _, err = err.partition("\n")
        assert note.startswith("no teacher at runs/smoke/fm_cifar_teacher yet: training it first")
        assert_user_error(code, err, f"training the missing teacher with `realuid run {recipe} --smoke --out "
                          "runs/smoke/fm_cifar_teacher` failed (exit 2): malformed recipe or binding",
                          f"Where: {recipe}, line 1.", "start this run again")
    else:
        assert_user_error(code, err, f"the teacher's recipe {recipe} does not exist")
    assert not (tmp_path / "student").exists() and not (tmp_path / "runs").exists()


@pytest.mark.slow
@needs_shards
def test_sid_smoke_on_a_fresh_machine_trains_its_teacher_first_then_exports_and_samples(tmp_path):
    """``realuid run gin/sid_as_uid.gin --smoke`` in a folder with no runs/, as real processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "REALUID_CIFAR10": str(SHARDS)}
    (tmp_path / "gin").symlink_to(ROOT / "gin")   # a fresh clone: the recipes, and no runs/

    def realuid(*args):
        return subprocess.run([sys.executable, "-m", "realuid", *map(str, args)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)

    result = realuid("run", "gin/sid_as_uid.gin", "--smoke", "--no-progress", "--out", "runs/sid")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "training it first" in line]
    assert notes == ["no teacher at runs/smoke/edm_cifar_teacher yet: training it first "
                     "(CheckpointTeacher.train_missing): realuid run gin/edm_cifar_teacher.gin --smoke --out "
                     "runs/smoke/edm_cifar_teacher"]
    teacher, student = tmp_path / "runs" / "smoke" / "edm_cifar_teacher", tmp_path / "runs" / "sid"
    for folder in (teacher, student):
        assert list((folder / "checkpoints").glob("step_*.pt")), folder
        assert (folder / "samples.png").is_file() and list((folder / "samples").glob("step_*.png")), folder
    result = realuid("export", "runs/sid", "--out", "exports/sid")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "exports" / "sid" / "config.json").read_text())
    assert config["path"]["name"] == "EDM" and config["generator"]["kwargs"]["noise_scale"] == 2.5
    result = realuid("sample", "exports/sid", "--num", "4", "--batch-size", "4", "--device", "cpu", "--out", "drawn")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "drawn" / "samples.png").is_file()
    assert json.loads((tmp_path / "drawn" / "sample.json").read_text())["checkpoint"].endswith("model.safetensors")
