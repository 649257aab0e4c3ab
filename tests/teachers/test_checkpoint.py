"""CheckpointTeacher: a trained teacher run warm-starts the generator with its EMA weights; a missing teacher's error
prints the command that trains it."""

from __future__ import annotations

import pytest
import torch

from helpers import GIN, build_loop, needs_shards, smoke
from realuid.checkpoints import checkpoints, load_checkpoint
from realuid.errors import UserError

pytest.importorskip("timm")


@pytest.mark.slow
@needs_shards
def test_checkpoint_teacher_warm_starts_the_generator(cifar_workdir, cifar_teachers):
    trainer = build_loop(GIN / "realuid_fm_cifar.gin", cifar_workdir / "runs" / "warm", *smoke(cifar_workdir),
                         f"CheckpointTeacher.source = '{cifar_teachers['fm_cifar_teacher']}'").trainer
    teacher_weights = trainer.teacher.network.state_dict()
    for name, value in trainer.generator.network.state_dict().items():
        assert torch.equal(value, teacher_weights[name]), name
    ema = load_checkpoint(checkpoints(cifar_teachers["fm_cifar_teacher"] / "checkpoints")[-1])["ema"]
    assert torch.equal(teacher_weights["stem.weight"], ema["model.stem.weight"])   # the EMA weights, not the raw
    z = torch.randn(4, 3, 32, 32)
    with torch.no_grad():   # G(z) = z - v*(z, 1): one Euler step of the teacher
        assert torch.allclose(trainer.generator(z), z - trainer.teacher(z, torch.ones(4)), atol=1e-5)


@needs_shards
def test_missing_teacher_prints_the_command_that_trains_it(cifar_workdir):
    with pytest.raises(UserError) as err:
        build_loop(GIN / "realuid_fm_cifar.gin", cifar_workdir / "runs" / "missing", *smoke(cifar_workdir),
                   "CheckpointTeacher.source = 'no_such_teacher'")
    assert "realuid run gin/fm_cifar_teacher.gin --smoke --out runs/smoke/no_such_teacher" in err.value.message
