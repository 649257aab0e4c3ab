"""The CelebA 64x64 recipes on a small packed folder (CPU, smoke preset), and the image networks at 64x64."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from realuid.cli.app import app
from realuid.networks.dit import DiT
from realuid.networks.unet import UNet
from realuid.pictures import image_grid_png

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_unet_and_dit_take_64x64_images():
    x, t = torch.randn(2, 3, 64, 64), torch.rand(2)
    unet = UNet(img_resolution=64, model_channels=16, channel_mult=(1, 2, 2, 2), num_res_blocks=1,
                attn_resolutions=(16,), head_channels=8)
    dit = DiT(img_resolution=64, patch_size=8, hidden=32, depth=1, heads=4)
    for network in (unet, dit):
        with torch.no_grad():
            assert network(x, t).shape == (2, 3, 64, 64), type(network).__name__
    attention = [m for m in unet.modules() if type(m).__name__ == "SelfAttention"]
    assert attention, "attention at 16x16 was asked for"


def test_grid_of_64x64_samples(tmp_path):
    images = torch.rand(10, 3, 64, 64) * 2 - 1
    image_grid_png(images, tmp_path / "grid.png")
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (4 * 64, 3 * 64) and grid.mode == "RGB"


@pytest.mark.slow
def test_celeba64_teacher_then_realuid_student_smoke_runs(packed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                            # the student finds its teacher under runs/smoke/
    monkeypatch.setenv("REALUID_DATA", str(packed))        # the recipes' data folder
    runner = CliRunner()
    teacher = tmp_path / "runs" / "smoke" / "fm_celeba64_teacher"
    result = runner.invoke(app, ["run", str(ROOT / "gin" / "fm_celeba64_teacher.gin"), "--smoke", "--out",
                                 str(teacher), "--no-progress"])
    assert result.exit_code == 0, result.output
    student = tmp_path / "student"
    result = runner.invoke(app, ["run", str(ROOT / "gin" / "realuid_fm_celeba64.gin"), "--smoke", "--out",
                                 str(student), "--no-progress"])
    assert result.exit_code == 0, result.output
    for run in (teacher, student):
        config = (run / "config.gin").read_text()
        assert "ImageShards.resolution = 64" in config and "UNet.img_resolution = 64" in config
        grids = [run / "samples.png", *sorted((run / "samples").glob("step_*.png"))]
        assert len(grids) >= 2
        for path in grids:
            width, height = Image.open(path).size
            assert width % 64 == 0 and height % 64 == 0 and width >= 128, (path, width, height)
    rows = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and "fake_loss_real" in rows[-1] and "uid_gap" in rows[-1]


def test_recipe_without_a_data_folder_or_with_the_wrong_resolution(packed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REALUID_DATA", raising=False)
    runner = CliRunner()
    recipe = str(ROOT / "gin" / "fm_celeba64_teacher.gin")
    result = runner.invoke(app, ["run", recipe, "--smoke", "--out", str(tmp_path / "out"), "--no-progress"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in text, result.output
    assert "$REALUID_DATA is not set" in text and "ImageShards.root" in text
    small = tmp_path / "small"
    from realuid.data.pack import pack_images

    pack_images(_images(tmp_path), small, resolution=32)
    monkeypatch.setenv("REALUID_DATA", str(small))
    result = runner.invoke(app, ["run", recipe, "--smoke", "--out", str(tmp_path / "out"), "--no-progress"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "ImageShards.resolution = 64, but" in text and "holds 32x32 images" in text
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _images(tmp_path: Path) -> Path:
    import numpy as np

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.slow
@pytest.mark.torchrun
def test_two_processes_at_half_batch_match_one_process_on_image_shards(packed, tmp_path):
    """torchrun, 2 CPU processes x batch 4 == 1 process x batch 8 (every rank draws the global batch, keeps a slice)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "REALUID_DATA": str(packed), "PYTHONUNBUFFERED": "1"}
    binds = ["TrainingLoop.tensorboard = False", "TrainingLoop.steps = 4", "TrainingLoop.eval_every = 2",
             "TrainingLoop.checkpoint_every = 4", "ImageShards.limit = 40"]
    flags = [a for b in binds for a in ("-b", b)]
    rows = {}
    for procs in (1, 2):
        launcher = [sys.executable, "-m", "realuid"] if procs == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
             str(29500 + os.getpid() % 2000), "-m", "realuid"]
        out = tmp_path / f"procs{procs}"
        done = subprocess.run([*launcher, "run", str(ROOT / "gin" / "fm_celeba64_teacher.gin"), "--smoke", "--out",
                               str(out), "--no-progress", *flags], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        rows[procs] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows[1]] == [r["step"] for r in rows[2]] == [2, 4]
    for one, two in zip(rows[1], rows[2]):
        assert abs(one["loss"] - two["loss"]) <= 1e-5 * abs(one["loss"]), (one, two)
