"""``realuid export --dtype bfloat16``: half the bytes, loaded back as float32 within bf16 rounding; an export
folder as a distillation's teacher (``CheckpointTeacher.source = EXPORT``)."""

from __future__ import annotations

import contextlib
import json
import os

import pytest
import torch

from helpers import GIN, SHARDS, cli, needs_shards, smoke
from realuid.errors import UserError
from realuid.models.export import CONFIG_FILE, WEIGHTS_FILE, export_run, load_teacher

pytestmark = [pytest.mark.usefixtures("one_thread"), needs_shards]


@contextlib.contextmanager
def shards_in(folder):
    old = os.environ.get("REALUID_CIFAR10")
    os.environ["REALUID_CIFAR10"] = str(SHARDS)
    try:
        with contextlib.chdir(folder):
            yield
    finally:
        if old is None:
            os.environ.pop("REALUID_CIFAR10", None)
        else:
            os.environ["REALUID_CIFAR10"] = old


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A smoke flow-matching teacher run, exported in float32 and in bfloat16."""
    from realuid.engine.runner import run

    tmp = tmp_path_factory.mktemp("teacher")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with shards_in(tmp):
            run(GIN / "fm_cifar_teacher.gin", smoke(tmp), out=tmp / "run", progress=False)
            export_run(tmp / "run", tmp / "fp32")
            export_run(tmp / "run", tmp / "bf16", dtype="bfloat16")
    finally:
        torch.set_num_threads(threads)
    return tmp


def test_a_bfloat16_export_is_half_the_size_and_loads_as_float32_within_bf16_rounding(teacher):
    config = json.loads((teacher / "bf16" / CONFIG_FILE).read_text())
    assert config["weights_dtype"] == "bfloat16"
    assert json.loads((teacher / "fp32" / CONFIG_FILE).read_text())["weights_dtype"] == "float32"
    ratio = (teacher / "bf16" / WEIGHTS_FILE).stat().st_size / (teacher / "fp32" / WEIGHTS_FILE).stat().st_size
    assert 0.45 < ratio < 0.55
    full, half = load_teacher(teacher / "fp32"), load_teacher(teacher / "bf16")
    for (name, a), b in zip(full.state_dict().items(), half.state_dict().values()):
        assert b.dtype == a.dtype == torch.float32, name                       # cast back to the module's dtype
        assert torch.equal(b, a.to(torch.bfloat16).float()), name               # exactly the rounded weights
    x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.full((2,), 0.5)
    with torch.no_grad():
        ours, theirs = half(x, t), full(x, t)
    assert torch.allclose(ours, theirs, rtol=0.05, atol=0.05 * theirs.abs().max().item())
    assert not torch.equal(ours, theirs)   # it is a rounding: the check above can fail


def test_bad_dtypes_are_refused(teacher, tmp_path):
    with pytest.raises(UserError, match="--dtype 'float16' is not one of float32, bfloat16"):
        export_run(teacher / "run", tmp_path / "x", dtype="float16")
    code, out, err = cli("export", str(teacher / "run"), "--out", str(tmp_path / "y"), "--dtype", "half")
    assert code != 0 and "float32 or bfloat16" in out + err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_distillation_takes_its_teacher_from_an_export_folder(teacher, tmp_path):
    from realuid.engine.runner import run

    with shards_in(tmp_path):
        loop = run(GIN / "uid_fm_cifar.gin", [*smoke(tmp_path), f"CheckpointTeacher.source = '{teacher / 'bf16'}'"],
                   out=tmp_path / "student", progress=False)
    exported = load_teacher(teacher / "bf16").field.network.state_dict()
    ours = loop.trainer.teacher.network.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in exported.items())
    assert loop.trainer.teacher.checkpoint == teacher / "bf16" / WEIGHTS_FILE
    # generator_init = 'teacher' copied the exported weights
    generator = loop.trainer.generator.network.state_dict()
    assert (tmp_path / "student" / "metrics.jsonl").is_file() and generator.keys() == exported.keys()


def test_an_export_of_another_network_or_of_a_student_is_refused_as_teacher(teacher, tmp_path):
    from realuid.config import parse_recipe
    from realuid.teachers.checkpoint import CheckpointTeacher
    from realuid.networks.unet import UNet

    with shards_in(tmp_path):
        parse_recipe(GIN / "uid_fm_cifar.gin", [*smoke(tmp_path), "UNet.model_channels = 8"])
        with pytest.raises(UserError, match="UNet.model_channels: trained with 16, this recipe builds 8"):
            CheckpointTeacher(UNet(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=()),
                              source=str(teacher / "bf16"))
    student = tmp_path / "student_export"
    student.mkdir()
    config = json.loads((teacher / "bf16" / CONFIG_FILE).read_text())
    (student / CONFIG_FILE).write_text(json.dumps({**config, "kind": "student", "generator": config["backbone"]}))
    (student / WEIGHTS_FILE).write_bytes((teacher / "bf16" / WEIGHTS_FILE).read_bytes())
    with pytest.raises(UserError, match="holds a one-step student, not a teacher"):
        CheckpointTeacher(UNet(), source=str(student))
