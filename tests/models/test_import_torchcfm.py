"""``realuid import torchcfm``: torchcfm's own UNetModelWrapper (random weights) in every supported layout, read back.

The imported teacher's field must equal torchcfm's network after the convention
mapping, ``v_realuid(x, t) = -v_torchcfm(x, 1 - t)``, and an imported generator
must equal the reference ``G(z) = z + g(0, z)``, within 1e-5 in float32 (measured:
about 3e-7, on outputs of size 0.5); the same comparison without the mapping
differs by more than 0.1 (the calibration). Bad inputs exit 2 with what, where and
fix, and leave nothing in ``--out``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("torchcfm.models.unet.unet")
from torchcfm.models.unet.unet import UNetModelWrapper  # noqa: E402

from realuid.checkpoints import checkpoints, load_checkpoint  # noqa: E402
from realuid.cli import app  # noqa: E402
from realuid.context import RunContext  # noqa: E402
from realuid.models.loading import load_trained  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
SHARDS = Path(os.environ.get("REALUID_CIFAR10") or "/work/shared/data/cifar10")
needs_shards = pytest.mark.skipif(not (SHARDS / "train-000000.tar.gz").is_file(), reason="no CIFAR-10 shards")
#: what the weights do not show: the resolution and the heads (torchcfm num_head_channels = 16)
BINDS = ["UNet.img_resolution = 16", "UNet.head_channels = 16"]
#: both ends, near them, and inside; one time per sample of the batch
TIMES = torch.tensor([0.0, 1e-4, 0.3, 0.5, 0.999, 1.0])
TOLERANCE = 1e-5


def torchcfm_net(seed: int, resolution: int = 16, **options) -> UNetModelWrapper:
    """A small torchcfm U-Net with every weight random (its zero-initialised layers too)."""
    torch.manual_seed(seed)
    settings = dict(dim=(3, resolution, resolution), num_channels=32, num_res_blocks=1, channel_mult=[1, 2],
                    num_heads=2, num_head_channels=16, attention_resolutions=str(resolution // 2), dropout=0.1,
                    num_classes=10)
    net = UNetModelWrapper(**{**settings, **options})
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.1)
    return net.eval()


def cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def run_import(checkpoint: Path, out: Path, *extra: str) -> str:
    code, stdout, stderr = cli("import", "torchcfm", str(checkpoint), "--out", str(out), *extra,
                               *[a for b in BINDS for a in ("--bind", b)])
    assert code == 0, stdout + stderr
    return stdout


def field_difference(out: Path, net, labels=None, mapped: bool = True) -> float:
    """max |realuid field - torchcfm field| over TIMES (mapped: -net(1 - t, x); else the naive net(t, x))."""
    model = load_trained(out)
    assert model.kind == "teacher" and model.parameterization == "velocity"
    torch.manual_seed(1)
    x = torch.randn(len(TIMES), 3, 16, 16)
    with torch.no_grad():
        ours = model.module(x, TIMES, labels)
        theirs = -net(1 - TIMES, x, y=labels) if mapped else net(TIMES, x, y=labels)
    return float((ours - theirs).abs().max())


@pytest.fixture(scope="module")
def nets():
    return {"plain": torchcfm_net(0), "other": torchcfm_net(1),
            "cond": torchcfm_net(2, class_cond=True, use_scale_shift_norm=True),
            "new_order": torchcfm_net(3, use_new_attention_order=True)}


def reference_teacher(nets) -> dict:
    """The RealUID reference teacher: several EMAs, the training network, optimiser state, the GAN head."""
    with_head = {**nets["plain"].state_dict(), "cls_pred_branch.0.weight": torch.randn(4, 4, 2, 2)}
    other = {**nets["other"].state_dict(), "cls_pred_branch.0.weight": torch.randn(4, 4, 2, 2)}
    return {"net_model": other, "ema_models": {"0.999": with_head, "0.9996": other, "0.9999": other},
            "optim": {"state": {}, "param_groups": [{"lr": 2e-4}]}, "sched": {"last_epoch": 5}, "step": 400}


def test_reference_teacher_layout_imports_the_0999_ema_and_equals_torchcfm(nets, tmp_path):
    ckpt = tmp_path / "cifar10_uncond_FM_400.pt"
    torch.save(reference_teacher(nets), ckpt)
    stdout = run_import(ckpt, tmp_path / "teacher")
    assert "UNet.time_scale = 1.0" in stdout and "1 GAN-head tensors" in stdout
    diff = field_difference(tmp_path / "teacher", nets["plain"])
    assert diff <= TOLERANCE, diff
    assert field_difference(tmp_path / "teacher", nets["plain"], mapped=False) > 0.1   # calibration
    # the folder is a realuid run: config, run.json with the command and the source's sha256, a verified checkpoint
    info = json.loads((tmp_path / "teacher" / "run.json").read_text())
    from realuid.io import sha256_file

    assert info["imported"]["sha256"] == sha256_file(ckpt) and info["imported"]["key"] == "ema_models/0.999"
    assert info["command"].startswith("realuid import torchcfm") and info["imported"]["step"] == 400
    assert "UNet.time_scale = 1.0" in (tmp_path / "teacher" / "config.gin").read_text()
    [path] = checkpoints(tmp_path / "teacher" / "checkpoints")
    state = load_checkpoint(path)
    assert state["meta"]["kind"] == "teacher" and state["meta"]["shape"] == [3, 16, 16]
    assert state["meta"]["path"] == "RectifiedFlow" and state["step"] == 400


def test_key_picks_another_ema(nets, tmp_path):
    ckpt = tmp_path / "reference.pt"
    torch.save(reference_teacher(nets), ckpt)
    run_import(ckpt, tmp_path / "teacher", "--key", "ema_models/0.9999")
    assert field_difference(tmp_path / "teacher", nets["other"]) <= TOLERANCE


@pytest.mark.parametrize("layout", ["torchcfm_example", "data_parallel", "bare", "safetensors"])
def test_other_layouts_equal_torchcfm(nets, tmp_path, layout):
    sd = nets["plain"].state_dict()
    other = nets["other"].state_dict()
    if layout == "torchcfm_example":
        ckpt = tmp_path / "cifar10_weights_step_400000.pt"
        torch.save({"net_model": other, "ema_model": sd, "sched": {}, "optim": {}, "step": 9}, ckpt)
    elif layout == "data_parallel":   # torchcfm's example run with --parallel saves DataParallel's module.* keys
        ckpt = tmp_path / "parallel.pt"
        torch.save({"net_model": {f"module.{k}": v for k, v in other.items()},
                    "ema_model": {f"module.{k}": v for k, v in sd.items()}}, ckpt)
    elif layout == "bare":
        ckpt = tmp_path / "bare.pt"
        torch.save(sd, ckpt)
    else:
        from safetensors.torch import save_file

        ckpt = tmp_path / "bare.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(ckpt))
    run_import(ckpt, tmp_path / "teacher")
    diff = field_difference(tmp_path / "teacher", nets["plain"])
    assert diff <= TOLERANCE, (layout, diff)


def test_class_conditional_scale_shift_teacher_equals_torchcfm(nets, tmp_path):
    ckpt = tmp_path / "cond.pt"
    torch.save({"ema_model": nets["cond"].state_dict()}, ckpt)
    run_import(ckpt, tmp_path / "teacher")
    labels = torch.tensor([0, 3, 9, 1, 5, 7])
    diff = field_difference(tmp_path / "teacher", nets["cond"], labels)
    assert diff <= TOLERANCE, diff
    model = load_trained(tmp_path / "teacher")
    assert model.num_classes == 10
    assert "fm_cifar_teacher_cond.gin" in json.loads((tmp_path / "teacher" / "run.json").read_text())["recipe"]


def test_new_attention_order_needs_its_flag(nets, tmp_path):
    ckpt = tmp_path / "new.pt"
    torch.save(nets["new_order"].state_dict(), ckpt)
    run_import(ckpt, tmp_path / "flagged", "--new-attention-order")
    assert field_difference(tmp_path / "flagged", nets["new_order"]) <= TOLERANCE
    run_import(ckpt, tmp_path / "unflagged")     # the heads' order is not visible in the weights
    assert field_difference(tmp_path / "unflagged", nets["new_order"]) > 1e-3


def test_checkpoint_teacher_reads_the_imported_folder(nets, tmp_path):
    from realuid.networks.unet import UNet
    from realuid.paths.flow import RectifiedFlow
    from realuid.teachers.checkpoint import CheckpointTeacher

    ckpt = tmp_path / "bare.pt"
    torch.save(nets["plain"].state_dict(), ckpt)
    run_import(ckpt, tmp_path / "teacher")
    network = UNet(img_resolution=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                   head_channels=16, scale_shift=False, time_scale=1.0)
    path = RectifiedFlow(t_min=0.0, t_max=1.0)
    data = SimpleNamespace(shape=(3, 16, 16), num_classes=0)
    teacher = CheckpointTeacher(network, source=str(tmp_path / "teacher")).attach(
        RunContext(path, "velocity", data, owner="DistillationTrainer")).eval()
    x = torch.randn(len(TIMES), 3, 16, 16)
    with torch.no_grad():
        diff = float((teacher(x, TIMES) + nets["plain"](1 - TIMES, x)).abs().max())
    assert diff <= TOLERANCE, diff


def test_reference_generator_becomes_a_student_equal_to_z_plus_g(nets, tmp_path):
    ckpt = tmp_path / "cifar10_uncond_alpha1.0_beta1.0.pt"
    gen = {**nets["plain"].state_dict(), "cls_pred_branch.0.weight": torch.randn(4, 4, 2, 2)}
    torch.save({"gen": nets["other"].state_dict(), "ema_gens": {"0.9999": gen}, "u": nets["other"].state_dict(),
                "step": 12}, ckpt)
    stdout = run_import(ckpt, tmp_path / "student")
    assert "generator" in stdout and "FIRST_STAGE" in stdout
    model = load_trained(tmp_path / "student")
    assert model.kind == "student" and model.shape == (3, 16, 16)
    torch.manual_seed(2)
    z = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        diff = float((model.module(z) - (z + nets["plain"](torch.zeros(4), z))).abs().max())
    assert diff <= TOLERANCE, diff
    code, stdout, stderr = cli("sample", str(tmp_path / "student"), "--num", "4", "--out", str(tmp_path / "samples"),
                               "--device", "cpu")
    assert code == 0, stdout + stderr
    assert (tmp_path / "samples" / "samples.npz").is_file()


# -- bad inputs: exit 2, what / where / fix, nothing in --out ---------------------------------------------------------
def refused(tmp_path: Path, checkpoint: Path, *extra: str, fmt: str = "torchcfm", out: Path | None = None) -> str:
    out = out or tmp_path / "out"
    existed = out.exists()
    code, stdout, stderr = cli("import", fmt, str(checkpoint), "--out", str(out), *extra,
                               *[a for b in BINDS for a in ("--bind", b)])
    message = " ".join((stdout + stderr).split())
    assert code == 2, message
    assert "Where:" in message and "Fix:" in message, message
    assert out.exists() == existed, "the import left a folder behind"
    assert not [p for p in out.parent.iterdir() if ".import-tmp" in p.name], "a staging folder was left behind"
    return message


def test_wrong_formats_are_refused(nets, tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    assert "is not a PyTorch checkpoint" in refused(tmp_path, text)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    assert "not a valid .safetensors file" in refused(tmp_path, bad)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    assert "holds a Tensor, not a state dict" in refused(tmp_path, tmp_path / "tensor.pt")
    good = tmp_path / "good.pt"
    torch.save(nets["plain"].state_dict(), good)
    assert "unknown checkpoint format 'diffusers'" in refused(tmp_path, good, fmt="diffusers")
    assert "does not exist" in refused(tmp_path, tmp_path / "missing.pt")


def test_a_pickle_that_needs_code_is_refused_by_name(nets, tmp_path):
    ckpt = tmp_path / "whole_module.pt"
    torch.save({"ema_model": nets["plain"]}, ckpt)     # a pickled module, not a state dict
    message = refused(tmp_path, ckpt)
    assert "asks to run torchcfm.models.unet.unet.UNetModelWrapper" in message
    assert "state_dict()" in message


def test_other_architectures_are_refused(tmp_path):
    from realuid.networks.mlp import MLP
    from realuid.networks.unet import UNet

    torch.save(MLP(dim=2).state_dict(), tmp_path / "mlp.pt")
    assert "is not a torchcfm U-Net: it has no time_embed.0.weight" in refused(tmp_path, tmp_path / "mlp.pt")
    torch.save(UNet(model_channels=32, channel_mult=(1, 2), num_res_blocks=1).state_dict(), tmp_path / "ours.pt")
    assert "is not a torchcfm U-Net" in refused(tmp_path, tmp_path / "ours.pt")
    torch.save(torchcfm_net(5, learn_sigma=True).state_dict(), tmp_path / "sigma.pt")
    message = refused(tmp_path, tmp_path / "sigma.pt")
    assert "the first tensor that differs is head.2.weight (from out.2.weight): [6, 32, 3, 3] in the weights, " \
           "[3, 32, 3, 3] in the network" in message, message
    torch.save(torchcfm_net(6, resblock_updown=True).state_dict(), tmp_path / "updown.pt")
    assert "resblock_updown=True" in refused(tmp_path, tmp_path / "updown.pt")
    net = torchcfm_net(7)
    sd = net.state_dict()
    sd["input_blocks.1.0.in_layers.2.weight"] = torch.zeros(32, 32, 1, 1)     # a kernel of another size
    torch.save(sd, tmp_path / "kernel.pt")
    assert "the first tensor that differs is encoder.0.0.conv_in.weight" in refused(tmp_path, tmp_path / "kernel.pt")


def test_missing_and_ambiguous_keys_list_the_keys_present(nets, tmp_path):
    ckpt = tmp_path / "reference.pt"
    torch.save(reference_teacher(nets), ckpt)
    message = refused(tmp_path, ckpt, "--key", "ema_models/0.5")
    assert "has no key 'ema_models/0.5'" in message and "'ema_models/0.9999'" in message and "'net_model'" in message
    sd = nets["plain"].state_dict()
    torch.save({"ema_models": {"0.9996": sd, "0.9999": sd}}, tmp_path / "two.pt")
    message = refused(tmp_path, tmp_path / "two.pt")
    assert "several EMA networks (ema_models/0.9996, ema_models/0.9999)" in message
    torch.save({"a": sd, "b": sd}, tmp_path / "ab.pt")
    assert "pass --key with one of 'a', 'b'" in refused(tmp_path, tmp_path / "ab.pt")
    assert "not a state dict" in refused(tmp_path, ckpt, "--key", "optim")


def test_an_existing_out_is_refused_and_left_as_it_was(nets, tmp_path):
    ckpt = tmp_path / "bare.pt"
    torch.save(nets["plain"].state_dict(), ckpt)
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "already exists" in refused(tmp_path, ckpt, out=out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# -- the imported folders in a CIFAR recipe: teacher by CheckpointTeacher.source, student by generator_checkpoint --------
@pytest.mark.slow
@needs_shards
def test_imported_teacher_and_student_fine_tune_in_a_cifar_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    teacher, student = torchcfm_net(8, resolution=32), torchcfm_net(9, resolution=32)
    torch.save({"ema_models": {"0.999": teacher.state_dict()}}, tmp_path / "teacher.pt")
    torch.save({"ema_gens": {"0.999": student.state_dict()}}, tmp_path / "student.pt")
    heads = ["--bind", "UNet.head_channels = 16"]
    for name in ("teacher", "student"):
        code, stdout, stderr = cli("import", "torchcfm", str(tmp_path / f"{name}.pt"), "--out", str(tmp_path / name),
                                   *heads)
        assert code == 0, stdout + stderr
    arch = ["UNet.model_channels = 32", "UNet.channel_mult = (1, 2)", "UNet.num_res_blocks = 1",
            "UNet.attn_resolutions = (16,)", "UNet.head_channels = 16", "UNet.time_scale = 1.0"]
    binds = [f"CheckpointTeacher.source = '{tmp_path / 'teacher'}'", f"FIRST_STAGE = '{tmp_path / 'student'}'",
             f"CIFAR10Shards.cache_dir = '{tmp_path / 'cache'}'", "CIFAR10Shards.limit = 16",
             "TrainingLoop.batch_size = 4", "TrainingLoop.eval_samples = 4", *arch]
    code, stdout, stderr = cli("run", str(ROOT / "gin" / "realuid_ft_fm_cifar.gin"), "--smoke", "--no-progress",
                               "--out", str(tmp_path / "ft"), *[a for b in binds for a in ("--bind", b)])
    assert code == 0, stdout + stderr
    rows = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and all(isinstance(v, (int, float)) for v in rows[-1].values())
