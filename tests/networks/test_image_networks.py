"""UNet and DiT backbones: shapes, conditioning, gradients, memory format, bf16, parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from realuid.errors import UserError
from realuid.networks.unet import UNet
from realuid.components import get

timm = pytest.importorskip("timm")
from realuid.networks.dit import DiT  # noqa: E402


def tiny_unet(**kwargs) -> UNet:
    config = dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), num_heads=2)
    return UNet(**{**config, **kwargs})


def tiny_dit(**kwargs) -> DiT:
    return DiT(**{**dict(hidden=32, depth=2, heads=4, patch_size=4), **kwargs})


def randomize_zero_init(net: nn.Module) -> nn.Module:
    """Re-draw every all-zero weight so that outputs and gradients depend on every layer."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0, 0.05)
    return net


NETWORKS = [pytest.param(tiny_unet, id="unet"), pytest.param(tiny_dit, id="dit")]


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(4, 3, 32, 32, generator=g), torch.rand(4, generator=g), torch.randint(0, 10, (4,), generator=g))


@pytest.mark.parametrize("make", NETWORKS)
def test_output_shape_and_scalar_time(make, batch):
    x, t, _ = batch
    net = randomize_zero_init(make()).eval()
    out = net(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # a scalar time is broadcast to the batch: same as passing it per sample
    assert torch.allclose(net(x, torch.tensor(0.3)), net(x, torch.full((4,), 0.3)), atol=1e-6)
    # time matters
    assert not torch.allclose(net(x, torch.full((4,), 0.1)), net(x, torch.full((4,), 0.9)))


@pytest.mark.parametrize("make", NETWORKS)
def test_zero_initialised_output(make, batch):
    """Zero-initialised last layers (adaLN-Zero / zero conv): a fresh network outputs exactly 0."""
    x, t, _ = batch
    assert make()(x, t).abs().max() == 0


@pytest.mark.parametrize("make", NETWORKS)
def test_class_conditioning_and_label_dropout(make, batch):
    x, t, y = batch
    net = randomize_zero_init(make(num_classes=10, label_dropout=0.5)).eval()
    with torch.no_grad():
        net.label_embedding.embedding.weight.normal_()
    conditional, unconditional = net(x, t, y), net(x, t, None)
    assert not torch.allclose(conditional, unconditional)
    # cond=None is the null class index num_classes
    assert torch.allclose(unconditional, net(x, t, torch.full((4,), 10)), atol=1e-6)
    # eval: no label dropout, deterministic
    assert torch.equal(net(x, t, y), conditional)
    # training: each label is replaced by the null class with probability 0.5
    net.train()
    labels = torch.zeros(4000, dtype=torch.long)
    torch.manual_seed(0)
    emb = net.label_embedding(labels, len(labels), labels.device)
    dropped = (emb == net.label_embedding.embedding.weight[10]).all(dim=1).float().mean().item()
    assert 0.45 < dropped < 0.55


@pytest.mark.parametrize("make", NETWORKS)
def test_unconditional_network_refuses_labels(make, batch):
    x, t, y = batch
    with pytest.raises(UserError, match="num_classes"):
        make()(x, t, y)


@pytest.mark.parametrize("make", NETWORKS)
def test_gradients_reach_every_parameter(make, batch):
    x, t, y = batch
    net = randomize_zero_init(make(num_classes=10))
    net(x, t, y).square().mean().backward()
    unused = [name for name, p in net.named_parameters()
              if p.grad is None or not p.grad.any()]
    assert unused == []


@pytest.mark.parametrize("make", NETWORKS)
def test_channels_last_matches_contiguous(make, batch):
    x, t, _ = batch
    net = randomize_zero_init(make()).eval()
    reference = net(x, t)
    net = net.to(memory_format=torch.channels_last)
    out = net(x.contiguous(memory_format=torch.channels_last), t)
    assert torch.allclose(out, reference, atol=1e-5)


def test_unet_in_channels_last_gives_the_same_outputs_and_weight_gradients_in_float64(batch):
    x, t, _ = batch
    torch.manual_seed(0)
    nchw = randomize_zero_init(tiny_unet()).double().eval()   # eval: no dropout
    nhwc = randomize_zero_init(tiny_unet()).double().eval().to(memory_format=torch.channels_last)
    nhwc.load_state_dict(nchw.state_dict())
    outs = []
    for net, inputs in ((nchw, x.double()), (nhwc, x.double().contiguous(memory_format=torch.channels_last))):
        out = net(inputs, t.double())
        out.square().mean().backward()
        outs.append(out)
    assert torch.allclose(outs[0], outs[1], rtol=0, atol=1e-10)
    for (name, a), b in zip(nchw.named_parameters(), nhwc.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-9, atol=1e-12), name


@pytest.mark.parametrize("make", NETWORKS)
def test_bf16_autocast_forward(make, batch):
    x, t, y = batch
    net = randomize_zero_init(make(num_classes=10)).eval()
    reference = net(x, t, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t, y)
    assert torch.isfinite(out).all()
    # bf16 has an 8-bit mantissa: agreement to a few percent of the output scale
    assert (out.float() - reference).abs().max() < 0.05 * reference.abs().max() + 1e-3


def test_paper_unet_parameter_count():
    """The RealUID teacher configuration, counted exactly.

    ``scale_shift=False`` is the torchcfm U-Net the paper trains (additive time
    embedding); adaGN doubles each block's embedding projection, adding
    sum(512 * c_out + c_out) = 513 * 4992 parameters over the 22 residual blocks
    (5 of 128 channels, 17 of 256). The paper quotes 36.8M for its model, which
    also carries a 0.53M-parameter discriminator head: both counts lie within
    5% of it.
    """
    paper = dict(model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                 head_channels=64, dropout=0.1)
    torchcfm_equivalent = UNet(**paper, scale_shift=False).num_parameters()
    adagn = UNet(**paper).num_parameters()
    assert torchcfm_equivalent == 35_746_307
    assert adagn == torchcfm_equivalent + 513 * (5 * 128 + 17 * 256)
    for count in (torchcfm_equivalent, adagn):
        assert abs(count - 36.8e6) / 36.8e6 < 0.05
    # 4 heads of 64 channels at the 16x16 level
    heads = {m.num_heads for m in UNet(**paper).modules() if type(m).__name__ == "SelfAttention"}
    assert heads == {4}


def test_dit_s2_parameter_count():
    """DiT-S/2 at 32x32: 33M parameters in the paper's table (at 256x256 latents, same blocks)."""
    count = DiT().num_parameters()
    assert 32e6 < count < 34e6


def test_registered_with_docstrings():
    for name in ("UNet", "DiT"):
        component = get(name)
        assert component.kind == "network"
        assert component.summary and component.summary != "(no docstring)"


def test_bad_configurations_raise_user_errors():
    with pytest.raises(UserError, match="halved"):
        UNet(img_resolution=30, channel_mult=(1, 2, 2))
    with pytest.raises(UserError, match="heads"):
        tiny_unet(num_heads=3)
    with pytest.raises(UserError, match="patch"):
        DiT(img_resolution=30, patch_size=4, hidden=32, depth=1, heads=4)
    with pytest.raises(UserError, match="label_dropout"):
        tiny_unet(num_classes=10, label_dropout=1.5)


def test_a_head_width_wider_than_the_attended_level_is_a_user_error():
    # 16 channels at the middle block, 64 per head: zero heads (was a ZeroDivisionError)
    with pytest.raises(UserError, match="wider than the level"):
        UNet(model_channels=16, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(), head_channels=64)
