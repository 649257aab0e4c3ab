"""Small heads used by objectives: discriminators of the adversarial term (:class:`~realuid.objectives.WithGAN`).

:class:`MLPDiscriminator` reads ``(x_t, t)`` of vector data itself; :class:`UNetDiscriminator` sits on the fake
model's U-Net encoder features (the paper's UID+GAN baseline).
"""

from __future__ import annotations

import torch
from torch import nn

from realuid.errors import UserError
from realuid.networks.embeddings import SinusoidalEmbedding
from realuid.networks.unet import group_norm
from realuid.components import register


@register("network")
class MLPDiscriminator(nn.Module):
    """Discriminator logit D(x_t, t, cond) for vector data: [x, emb(t), emb(cond)] -> hidden (SiLU) -> 1.

    Used by :class:`~realuid.objectives.WithGAN`; a positive logit means "real".

    Args:
        dim: data dimension.
        hidden: width of each hidden layer.
        depth: number of hidden layers (>= 1).
        time_dim: size of the sinusoidal time embedding.
        num_classes: class-conditional when > 0 (a learned embedding of the label).
    """

    def __init__(self, dim: int | None = None, hidden: int = 64, depth: int = 2, time_dim: int = 32,
                 num_classes: int = 0):
        super().__init__()
        if dim is None:
            raise UserError("MLPDiscriminator.dim is unset", "MLPDiscriminator.dim",
                            "bind MLPDiscriminator.dim to the data dimension, e.g. MLPDiscriminator.dim = 2")
        for name, value, low in (("dim", dim, 1), ("hidden", hidden, 1), ("depth", depth, 1),
                                 ("time_dim", time_dim, 2), ("num_classes", num_classes, 0)):
            if not isinstance(value, int) or value < low or (name == "time_dim" and value % 2):
                rule = "an even integer >= 2" if name == "time_dim" else f"an integer >= {low}"
                raise UserError(f"MLPDiscriminator.{name} = {value!r} is not {rule}", f"MLPDiscriminator.{name}",
                                f"bind MLPDiscriminator.{name} to {rule}")
        self.time_embedding = SinusoidalEmbedding(time_dim)
        self.label_embedding = nn.Embedding(num_classes, time_dim) if num_classes else None
        width = dim + time_dim + (time_dim if num_classes else 0)
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(width if i == 0 else hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        parts = [x.flatten(1), self.time_embedding(t)]
        if self.label_embedding is not None:
            parts.append(self.label_embedding(cond))
        return self.net(torch.cat(parts, dim=-1)).squeeze(-1)


@register("network")
class UNetDiscriminator(nn.Module):
    """Discriminator logit on a U-Net's bottleneck features: the head of the paper's UID+GAN baseline (DMD2-style).

    ``D(x_t, t, cond) = Linear(pool(SiLU(GN(Conv_s2(SiLU(GN(h))))))),  h = fake.features(x_t, t, cond)``:
    the features come from the *fake model's* U-Net (:meth:`~realuid.networks.unet.UNet.features`: stem,
    encoder and middle block), so the discriminator shares the fake network's encoder. Only the layers
    above the features (a stride-2 3x3 convolution of ``width`` channels, group norms, a global average
    pool and a linear layer to one logit) are this module's parameters. A positive logit means "real".

    :class:`~realuid.objectives.WithGAN` calls it as ``head(x_t, t, cond, fake=fake_network)`` because
    ``reads_fake_network`` is set: in the fake-model update the discriminator loss trains this head and the
    fake network's encoder; in the generator update both are frozen and the gradient reaches only ``x_t``.

    Args:
        in_channels: channels of the fake network's features (``model_channels * channel_mult[-1]``).
            None reads them from the live gin config of ``DistillationTrainer.fake`` (a ``UNet``).
        width: channels of the head's convolution (None: ``in_channels``).
    """

    reads_fake_network = True

    def __init__(self, in_channels: int | None = None, width: int | None = None):
        super().__init__()
        if in_channels is None:
            in_channels = _fake_unet_channels()
        width = in_channels if width is None else width
        for name, value in (("in_channels", in_channels), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"UNetDiscriminator.{name} = {value!r} is not an integer >= 1",
                                f"UNetDiscriminator.{name}", f"bind UNetDiscriminator.{name} to a channel count")
        self.in_channels = in_channels
        self.net = nn.Sequential(group_norm(in_channels), nn.SiLU(),
                                 nn.Conv2d(in_channels, width, 3, stride=2, padding=1),
                                 group_norm(width), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(width, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None, *,
                fake: nn.Module | None = None) -> torch.Tensor:
        if fake is None or not hasattr(fake, "features"):
            raise UserError("UNetDiscriminator reads the fake network's features, and "
                            + ("none was given" if fake is None else f"{type(fake).__name__} has no features()"),
                            "WithGAN.head", "use a UNet fake model (DistillationTrainer.fake = @fake/UNet()), or "
                            "bind WithGAN.head = @MLPDiscriminator() for vector data")
        h = fake.features(x, t, cond)
        if h.shape[1] != self.in_channels:
            raise UserError(f"the fake network's features have {h.shape[1]} channels, UNetDiscriminator.in_channels "
                            f"is {self.in_channels}", "UNetDiscriminator.in_channels",
                            f"bind UNetDiscriminator.in_channels = {h.shape[1]} (or leave it unbound)")
        return self.net(h).squeeze(-1)


def _fake_unet_channels() -> int:
    """``model_channels * channel_mult[-1]`` of the U-Net bound to ``DistillationTrainer.fake`` (live gin config)."""
    from realuid.models.export import network_spec

    spec = network_spec("DistillationTrainer", "fake")
    kwargs = (spec or {}).get("kwargs") or {}
    if (spec or {}).get("name") != "UNet" or not kwargs.get("channel_mult"):
        found = "no network" if spec is None else f"a {spec.get('name')}"
        raise UserError(f"UNetDiscriminator.in_channels is unset and DistillationTrainer.fake is {found}, not a UNet "
                        "whose width can be read", "UNetDiscriminator.in_channels",
                        "bind UNetDiscriminator.in_channels to the channels of the fake network's features")
    return int(kwargs["model_channels"]) * int(kwargs["channel_mult"][-1])
