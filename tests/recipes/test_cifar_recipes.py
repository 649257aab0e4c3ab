"""Every CIFAR-10 recipe end to end at smoke scale (CPU, tiny networks, a few images and steps): teachers, students,
second stages, the DiT teacher through the CLI's --smoke flag."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import CIFAR_SECOND_STAGES, CIFAR_STUDENTS, ROOT, cli, needs_shards
from realuid.checkpoints import checkpoints, load_checkpoint

pytest.importorskip("timm")


def check_run_folder(out: Path, images: bool = True) -> list[dict]:
    """The files every run folder has (and, for images, the sample grids); returns its metrics rows."""
    for name in ("config.gin", "run.json", "metrics.jsonl"):
        assert (out / name).is_file(), name
    assert checkpoints(out / "checkpoints"), "no checkpoint"
    assert list((out / "tensorboard").glob("events.*")), "no TensorBoard events"
    if images:
        assert (out / "samples.png").is_file() and list((out / "samples").glob("step_*.png"))
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@needs_shards
def test_teacher_recipes_write_the_run_folder(cifar_teachers):
    rows = check_run_folder(cifar_teachers["fm_cifar_teacher"])
    assert rows[-1]["step"] == 2 and np.isfinite(rows[-1]["loss"])
    assert np.isfinite(rows[-1]["fd_classifier"]) and 0 <= rows[-1]["precision_classifier"] <= 1
    state = load_checkpoint(checkpoints(cifar_teachers["fm_cifar_teacher"] / "checkpoints")[-1])
    assert state["meta"]["kind"] == "teacher" and state["meta"]["parameterization"] == "velocity"
    assert state["meta"]["shape"] == [3, 32, 32] and "MatchingTrainer.network" in state["meta"]["config"]
    for name in ("fm_cifar_teacher_cond", "edm_cifar_teacher"):
        check_run_folder(cifar_teachers[name])
    edm = load_checkpoint(checkpoints(cifar_teachers["edm_cifar_teacher"] / "checkpoints")[-1])
    assert edm["meta"]["path"] == "EDM"


@pytest.mark.slow
@needs_shards
def test_student_recipes_write_the_run_folder(cifar_students):
    for name, out in cifar_students.items():
        rows = check_run_folder(out)
        assert rows[-1]["step"] == 2 and np.isfinite(rows[-1]["generator_loss"]), name
        assert "uid_gap" in rows[-1], name
        if name.startswith("realuid"):
            assert "fake_loss_real" in rows[-1], name
    assert "SiD" in (cifar_students["sid_as_uid"] / "config.gin").read_text()


def test_every_cifar_recipe_is_covered():
    recipes = {p.stem for p in (ROOT / "gin").glob("*cifar*.gin")} | {"sid_as_uid"}
    covered = set(CIFAR_STUDENTS) | set(CIFAR_SECOND_STAGES) | {"fm_cifar_teacher",
                                                             "fm_cifar_teacher_cond", "edm_cifar_teacher",
                                                             "fm_cifar_teacher_dit",
                                                             "uid_gan_fm_cifar"}   # run by tests/test_gan_image_head.py
    assert recipes <= covered, recipes - covered


@pytest.mark.slow
@needs_shards
def test_dit_teacher_recipe_through_the_cli_smoke_flag(cifar_workdir, cifar_teachers):
    out = cifar_workdir / "runs" / "dit"
    code, stdout, stderr = cli("run", str(ROOT / "gin" / "fm_cifar_teacher_dit.gin"), "--smoke", "--out", str(out),
                               "--no-progress", "-b", f"CIFAR10Shards.cache_dir = '{cifar_workdir / 'cache'}'")
    assert code == 0, stdout + stderr
    check_run_folder(out)
    assert "DiT.depth = 2" in (out / "config.gin").read_text()     # the smoke preset was applied
