"""DiffusersUNet: a small random diffusers UNet2DModel, saved with save_pretrained, read through realuid's VP path.

Its epsilon read through realuid (NetworkTeacher on VP) must equal the diffusers
output at the training timestep of the same noise level: exactly at the VP times
whose noise level is a table entry (integer steps, including the first and the
VP's last), and at any time against an independent interpolation of diffusers'
own ``alphas_cumprod`` (numpy). Schedules and models it cannot read are refused.
The recipe gin/uid_vp_diffusers.gin distils such a model for a few steps.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

diffusers = pytest.importorskip("diffusers")

from realuid.context import RunContext  # noqa: E402
from realuid.errors import UserError  # noqa: E402
from realuid.networks.wrappers import DiffusersUNet  # noqa: E402
from realuid.paths.diffusion import VE, VP  # noqa: E402
from realuid.teachers.network import NetworkTeacher  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
SHARDS = Path(os.environ.get("REALUID_CIFAR10") or "/work/shared/data/cifar10")
needs_shards = pytest.mark.skipif(not (SHARDS / "train-000000.tar.gz").is_file(), reason="no CIFAR-10 shards")
TOLERANCE = 1e-5


def small_unet(seed: int = 0, **options):
    torch.manual_seed(seed)
    settings = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                    norm_num_groups=4, attention_head_dim=8)
    unet = diffusers.UNet2DModel(**{**settings, **options})
    with torch.no_grad():       # every weight random (the zero-initialised output layers too)
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet.eval()


def save_pipeline(folder: Path, unet, **schedule) -> Path:
    unet.save_pretrained(folder / "unet")
    diffusers.DDPMScheduler(**schedule).save_pretrained(folder / "scheduler")
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    unet = small_unet()
    return unet, save_pipeline(tmp_path_factory.mktemp("ddpm"), unet)


def teacher_on(path, network) -> NetworkTeacher:
    return NetworkTeacher(network, "epsilon").attach(RunContext(path, "epsilon", owner="DistillationTrainer")).eval()


def vp_time(level: float, vp: VP) -> float:
    """The VP time t with -log abar_VP(t) = level."""
    a, b = 0.5 * (vp.beta_max - vp.beta_min), vp.beta_min
    return (-b + math.sqrt(b * b + 4 * a * level)) / (2 * a)


def levels_of(schedule: dict) -> np.ndarray:
    return -np.log(diffusers.DDPMScheduler(**schedule).alphas_cumprod.double().numpy())


@pytest.mark.parametrize("schedule", [{}, {"beta_schedule": "squaredcos_cap_v2"}], ids=["ddpm_linear", "cosine"])
def test_epsilon_through_realuid_equals_diffusers_at_the_steps_of_the_same_noise_level(tmp_path, schedule):
    unet = small_unet(1)
    folder = save_pipeline(tmp_path / "pipe", unet, **schedule)
    vp = VP()
    levels = levels_of(schedule)
    last = int(np.searchsorted(levels, vp.beta_min + 0.5 * (vp.beta_max - vp.beta_min)) - 1)   # below VP(t = 1)
    steps = [0, 1, 250, 700, last]
    times = torch.tensor([vp_time(float(levels[k]), vp) for k in steps])
    teacher = teacher_on(vp, DiffusersUNet(path=str(folder)))
    torch.manual_seed(2)
    x = torch.randn(len(steps), 3, 32, 32)
    with torch.no_grad():
        ours = teacher(x, times)
        theirs = torch.cat([unet(x[i:i + 1], k).sample for i, k in enumerate(steps)])
    assert float((ours - theirs).abs().max()) <= TOLERANCE
    # any time: the timestep of an independent interpolation of diffusers' table (numpy)
    times = torch.tensor([1e-3, 0.05, 0.3, 0.9, 1.0])
    reference = np.interp(vp.beta_min * times.double().numpy() + 0.5 * (vp.beta_max - vp.beta_min) *
                          times.double().numpy() ** 2, levels, np.arange(len(levels)))
    assert np.allclose(teacher.network.timestep(times).numpy(), reference, atol=1e-9)
    with torch.no_grad():
        ours = teacher(x, times)
        theirs = unet(x, torch.tensor(reference, dtype=torch.float32)).sample
        assert float((ours - theirs).abs().max()) <= TOLERANCE
        # calibration: the naive reading (timestep = 1000 t) differs
        naive = unet(x, 1000 * times).sample
    assert float((ours - naive).abs().max()) > 1e-3


def test_a_class_conditional_unet_folder_without_scheduler_gets_ddpm_defaults(tmp_path, capsys):
    unet = small_unet(3, num_class_embeds=10)
    unet.save_pretrained(tmp_path / "unet_only")
    network = DiffusersUNet(path=str(tmp_path / "unet_only"))
    assert "assuming DDPM's training schedule" in capsys.readouterr().err
    assert network.num_classes == 10
    teacher = teacher_on(VP(), network)
    labels = torch.tensor([0, 4, 9])
    x = torch.randn(3, 3, 32, 32)
    k = 500
    t = torch.full((3,), vp_time(float(levels_of({})[k]), VP()))
    with torch.no_grad():
        assert float((teacher(x, t, labels) - unet(x, k, class_labels=labels).sample).abs().max()) <= TOLERANCE
    with pytest.raises(UserError, match="needs labels"):
        teacher(x, t)
    # the UNet state dict is the wrapper's (generator_init = 'teacher' copies it)
    assert set(network.state_dict()) == {f"unet.{k}" for k in unet.state_dict()}


def test_schedules_models_and_paths_it_cannot_read_are_refused(model, tmp_path):
    unet, folder = model
    v_pred = save_pipeline(tmp_path / "v", unet, prediction_type="v_prediction")
    with pytest.raises(UserError, match="predicts 'v_prediction'"):
        DiffusersUNet(path=str(v_pred))
    with pytest.raises(UserError, match="beyond the network's noisiest training step"):
        DiffusersUNet(path=str(folder), vp=VP(beta_max=40.0))
    with pytest.raises(UserError, match="does not exist"):
        DiffusersUNet(path=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a diffusers model folder"):
        DiffusersUNet(path=str(tmp_path / "empty"))
    small_unet(4, out_channels=6).save_pretrained(tmp_path / "sigma")
    with pytest.raises(UserError, match="outputs 6 channels for 3 input channels"):
        DiffusersUNet(path=str(tmp_path / "sigma"))
    small_unet(5, time_embedding_type="fourier").save_pretrained(tmp_path / "ve")
    with pytest.raises(UserError, match="time embedding is 'fourier'"):
        DiffusersUNet(path=str(tmp_path / "ve"))
    (tmp_path / "cond" / "unet").mkdir(parents=True)
    (tmp_path / "cond" / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(UserError, match="holds a UNet2DConditionModel"):
        DiffusersUNet(path=str(tmp_path / "cond"))
    network = DiffusersUNet(path=str(folder))
    with pytest.raises(UserError, match="unpreconditioned VP path"):
        teacher_on(VE(), network)
    with pytest.raises(UserError, match="differs from the one the network's time is mapped on"):
        teacher_on(VP(beta_max=19.0), network)
    with pytest.raises(UserError, match="not set"):
        DiffusersUNet()


@pytest.mark.slow
@needs_shards
def test_the_recipe_distils_a_small_unet_through_the_vp_path(model, tmp_path, monkeypatch):
    _, folder = model
    monkeypatch.chdir(ROOT)
    from realuid.cli import app

    binds = [f"DIFFUSERS_MODEL = '{folder}'", f"CIFAR10Shards.cache_dir = '{tmp_path / 'cache'}'",
             "CIFAR10Shards.limit = 16", "TrainingLoop.batch_size = 2", "TrainingLoop.eval_samples = 2"]
    result = CliRunner().invoke(app, ["run", str(ROOT / "gin" / "uid_vp_diffusers.gin"), "--smoke", "--no-progress",
                                      "--out", str(tmp_path / "run"), *[a for b in binds for a in ("--bind", b)]])
    assert result.exit_code == 0, result.stdout + result.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and np.isfinite(rows[-1]["generator_loss"]) and np.isfinite(rows[-1]["uid_gap"])
    config = (tmp_path / "run" / "config.gin").read_text()
    assert "NetworkTeacher.parameterization = 'epsilon'" in config and "DiffusersUNet.vp = @VP()" in config
