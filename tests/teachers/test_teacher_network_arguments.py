"""CheckpointTeacher refuses a recipe that builds the teacher's network with other arguments than it was trained with.

A U-Net's time scale (or its attention heads) is not visible in its weights:
loading the weights into a network built with another value succeeds and
computes another function. The teacher-training run records the network's
full arguments in its checkpoints; the teacher compares them with what the
distillation recipe builds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def realuid(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "realuid", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_a_teacher_built_with_another_time_scale_is_refused(tmp_path):
    teacher = tmp_path / "teacher"
    cache = f"CIFAR10Shards.cache_dir = '{tmp_path / 'cache'}'"
    trained = realuid("run", str(ROOT / "gin/fm_cifar_teacher.gin"), "--smoke", "--no-progress", "--out", str(teacher),
                      "--bind", cache, cwd=ROOT)
    assert trained.returncode == 0, trained.stderr[-2000:]
    common = ["--smoke", "--no-progress", "--bind", f"CheckpointTeacher.source = '{teacher}'", "--bind", cache]
    same = realuid("run", str(ROOT / "gin/uid_fm_cifar.gin"), *common, "--out", str(tmp_path / "same"), cwd=ROOT)
    assert same.returncode == 0, same.stderr[-2000:]   # calibration: the teacher's own arguments are accepted
    other = realuid("run", str(ROOT / "gin/uid_fm_cifar.gin"), *common, "--bind", "UNet.time_scale = 1.0",
                    "--out", str(tmp_path / "other"), cwd=ROOT)
    assert other.returncode == 2, other.stdout + other.stderr
    assert "UNet.time_scale: trained with 1000.0, this recipe builds 1.0" in other.stderr
    assert "Traceback" not in other.stderr
    assert not (tmp_path / "other").exists()
