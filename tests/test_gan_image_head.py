"""The image discriminator of UID + GAN: a head on the fake U-Net's encoder features (UNet.features, UNetDiscriminator).

Checked: the feature tap is the encoder forward() runs (forward and the state dict unchanged); the head gives
one logit per sample; in the fake-model update the discriminator loss reaches the head *and* the fake network's
encoder (and only through them), in the generator update only the generator; the head lives inside the
FakeModelLoss module that DDP wraps; the recipe runs.
"""

from __future__ import annotations

import contextlib
import os

import gin
import pytest
import torch

from helpers import GIN, SHARDS, needs_shards, smoke
from realuid.distances import SquaredL2
from realuid.engine.distillation import FakeModelLoss
from realuid.errors import UserError
from realuid.fields import NetworkField
from realuid.networks.heads import MLPDiscriminator, UNetDiscriminator
from realuid.networks.unet import UNet
from realuid.objectives import Fields, RealUID, WithGAN
from realuid.paths.flow import RectifiedFlow

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), num_heads=2,
            img_resolution=8, dropout=0.0)


def tiny_unet(seed: int) -> UNet:
    torch.manual_seed(seed)
    net = UNet(**TINY)
    for p in net.parameters():   # zero-initialised output layers would hide gradients: give every weight a value
        torch.nn.init.normal_(p, std=0.05)
    return net


@pytest.fixture
def setting():
    path = RectifiedFlow()
    teacher = NetworkField(tiny_unet(0), path, "velocity").requires_grad_(False)
    fake = NetworkField(tiny_unet(1), path, "velocity")
    torch.manual_seed(2)
    head = UNetDiscriminator(in_channels=16)
    objective = WithGAN(RealUID(alpha=1.0, beta=1.0, distance=SquaredL2()), head, lambda_G=0.3, lambda_D=1.0)
    fields = Fields(teacher, fake, path, "velocity")
    generator = torch.nn.Conv2d(3, 3, 3, padding=1)
    g = torch.Generator().manual_seed(3)
    z, x1, real = (torch.randn(4, 3, 8, 8, generator=g) for _ in range(3))
    t = torch.rand(4, generator=g)
    return dict(path=path, teacher=teacher, fake=fake, head=head, objective=objective, fields=fields,
                generator=generator, z=z, x1=x1, real=real, t=t)


def grads(module) -> dict[str, torch.Tensor | None]:
    return {name: p.grad for name, p in module.named_parameters()}


def test_features_are_the_encoder_that_forward_runs_and_forward_is_unchanged():
    net = tiny_unet(0)
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    seen = {}
    net.middle.register_forward_hook(lambda m, i, out: seen.setdefault("middle", out))
    out = net(x, t)
    assert out.shape == x.shape
    h = net.features(x, t)
    assert h.shape == (2, 16, 4, 4) and net.bottleneck_channels() == 16
    assert torch.equal(h, seen["middle"])
    assert set(net.state_dict()) == set(UNet(**TINY).state_dict())   # no new tensors in the network


def test_the_head_gives_one_logit_per_sample_and_refuses_a_fake_model_without_features():
    net, head = tiny_unet(0), UNetDiscriminator(in_channels=16, width=8)
    assert head(torch.randn(5, 3, 8, 8), torch.rand(5), None, fake=net).shape == (5,)
    with pytest.raises(UserError, match="reads the fake network's features"):
        head(torch.randn(5, 3, 8, 8), torch.rand(5), None, fake=None)
    with pytest.raises(UserError, match="bind UNetDiscriminator.in_channels = 16"):
        UNetDiscriminator(in_channels=32)(torch.randn(5, 3, 8, 8), torch.rand(5), None, fake=net)
    with pytest.raises(UserError, match="in_channels is unset"):   # no gin config with a UNet fake model
        UNetDiscriminator()


def test_in_channels_are_read_from_the_fake_unets_gin_bindings(from_repository_root):
    from realuid.config import parse_recipe

    parse_recipe(GIN / "uid_gan_fm_cifar.gin", ["UNet.model_channels = 32"])
    assert UNetDiscriminator().in_channels == 32 * 2      # channel_mult (1, 2, 2, 2) of gin/base/cifar.gin
    gin.clear_config()
    parse_recipe(GIN / "uid_gan_fm_cifar.gin", ["fake/UNet.channel_mult = (1, 3)"])
    assert UNetDiscriminator().in_channels == 128 * 3     # the fake model's own scope counts


def test_fake_step_trains_the_head_and_the_fake_encoder_and_nothing_else(setting):
    s = setting
    path, objective, fields = s["path"], s["objective"], s["fields"]
    with torch.no_grad():
        x0 = s["generator"](s["z"])
    gen = path.interpolate(x0, s["x1"], s["t"])
    real = path.interpolate(s["real"], s["x1"], s["t"])
    module = FakeModelLoss(s["fake"], objective, fields)   # what DDP wraps: fake field and head in one module
    names = {n for n, _ in module.named_parameters()}
    assert any(n.startswith("heads.0.") for n in names) and any(n.startswith("fake.network.") for n in names)
    assert not any("teacher" in n for n in names)
    loss, logs = module(gen, real)
    loss.backward()
    assert {"disc_loss", "disc_accuracy"} <= set(logs)
    assert all(g is not None and g.abs().sum() > 0 for g in grads(s["head"]).values())
    with_gan = {n: g.clone() for n, g in grads(s["fake"].network).items()}
    assert all(g is None for g in grads(s["teacher"]).values()) and s["generator"].weight.grad is None

    # the discriminator's share of the fake network's gradient: the encoder's only (the decoder does not see it)
    s["fake"].zero_grad(set_to_none=True)
    plain, _ = objective.objective.fake_loss(fields, gen, None)
    plain.backward()
    differs = {n for n, g in grads(s["fake"].network).items() if not torch.allclose(g, with_gan[n], atol=1e-7)}
    assert any(n.startswith(("encoder.", "middle.", "stem.", "time_embedding.")) for n in differs)
    assert not any(n.startswith(("decoder.", "head.")) for n in differs), sorted(differs)


def test_generator_step_reaches_the_generator_only(setting):
    s = setting
    path, objective, fields = s["path"], s["objective"], s["fields"]
    s["fake"].requires_grad_(False)   # what DistillationTrainer.generator_step does
    gen = path.interpolate(s["generator"](s["z"]), s["x1"], s["t"])
    loss, logs = objective.generator_loss(fields, gen)
    loss.backward()
    assert "gan_generator_loss" in logs
    assert s["generator"].weight.grad is not None and s["generator"].weight.grad.abs().sum() > 0
    assert all(g is None for g in grads(s["head"]).values())
    assert all(p.requires_grad for p in s["head"].parameters())   # unfrozen again for the next fake step
    assert all(g is None for g in grads(s["fake"]).values()) and all(g is None for g in grads(s["teacher"]).values())
    # the adversarial term is part of the generator's gradient
    s["generator"].zero_grad(set_to_none=True)
    plain, _ = objective.objective.generator_loss(fields, path.interpolate(s["generator"](s["z"]), s["x1"], s["t"]))
    plain.backward()
    assert not torch.allclose(s["generator"].weight.grad, torch.autograd.grad(
        objective.generator_loss(fields, path.interpolate(s["generator"](s["z"]), s["x1"], s["t"]))[0],
        s["generator"].weight)[0])


def test_the_mlp_head_still_reads_x_t_itself():
    path = RectifiedFlow()
    mlp = lambda seed: NetworkField(torch.nn.Sequential(), path, "velocity")  # noqa: E731 (unused by the head)
    head = MLPDiscriminator(dim=2, hidden=8, depth=1)
    objective = WithGAN(RealUID(alpha=1.0, beta=1.0), head)
    x = path.interpolate(torch.randn(6, 2), torch.randn(6, 2), torch.rand(6))
    assert objective._logits(Fields(mlp(0), mlp(1), path, "velocity"), x).shape == (6,)


@needs_shards
def test_the_uid_gan_cifar_recipe_runs_with_the_smoke_preset(tmp_path):
    from realuid.engine.runner import run

    old = os.environ.get("REALUID_CIFAR10")
    os.environ["REALUID_CIFAR10"] = str(SHARDS)
    try:
        with contextlib.chdir(tmp_path):
            loop = run(GIN / "uid_gan_fm_cifar.gin", [*smoke(tmp_path), "CheckpointTeacher.train_missing = True"],
                       out=tmp_path / "student", progress=False)
    finally:
        if old is None:
            os.environ.pop("REALUID_CIFAR10", None)
        else:
            os.environ["REALUID_CIFAR10"] = old
    head = loop.trainer.objective.head
    assert isinstance(head, UNetDiscriminator) and head.in_channels == 32    # the smoke U-Net: 16 x 2
    assert loop.trainer.objective.lambda_G == 0.3 and loop.trainer.objective.lambda_D == 1.0
    row = loop.last_row if hasattr(loop, "last_row") else None
    rows = (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()
    assert rows and "disc_loss" in rows[-1] and "gan_generator_loss" in rows[-1], row
    head_ids = {id(p) for p in head.parameters()}
    assert head_ids <= {id(p) for p in loop.trainer.fake_loss.parameters()}   # inside the DDP-wrapped module
    assert head_ids <= {id(p) for g in loop.trainer.opt_fake.param_groups for p in g["params"]}
