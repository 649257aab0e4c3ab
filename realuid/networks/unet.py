"""DDPM++/ADM-style U-Net for images: ``forward(x, t, cond=None)``.

The backbone of the RealUID paper's CIFAR-10 teacher (the torchcfm U-Net, after
the ADM U-Net of Dhariwal & Nichol 2021, itself after DDPM, Ho et al. 2020, and
DDPM++, Song et al. 2021), written from its equations:

- time ``t`` -> sinusoidal features -> MLP -> embedding ``e`` (width 4C);
- residual block: ``h = conv(SiLU(GN(x)))``, then adaptive group norm
  ``h = GN(h) * (1 + s) + b`` with ``(s, b) = Linear(SiLU(e))``, then
  ``out = skip(x) + conv(dropout(SiLU(h)))`` (last conv zero-initialised, so each
  block starts as the identity);
- multi-head self-attention ``x + proj(softmax(q k^T / sqrt(d)) v)`` over the
  ``H W`` positions at the listed resolutions;
- an encoder that halves the resolution after each level (strided conv), a
  middle (res, attention, res) and a decoder that doubles it (nearest + conv),
  each decoder block fed the matching encoder activation by concatenation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from realuid.errors import UserError
from realuid.networks.embeddings import SinusoidalEmbedding
from realuid.components import register


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (fewer when ``channels`` is small, as in tiny test networks)."""
    groups = 32
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so that a residual branch starts switched off."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block conditioned on the embedding ``e``: ``skip(x) + conv(drop(SiLU(norm_e(conv(SiLU(GN(x)))))))``.

    ``norm_e(h) = GN(h) (1 + s) + b`` with ``(s, b) = Linear(SiLU(e))`` (adaptive
    group norm, DDPM++ / ADM's ``use_scale_shift_norm``), or, with
    ``scale_shift=False``, ``norm_e(h) = GN(h + Linear(SiLU(e)))`` (DDPM's
    additive embedding, the torchcfm teacher's choice).
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, dropout: float,
                 scale_shift: bool = True):
        super().__init__()
        self.scale_shift = scale_shift
        self.norm_in = group_norm(in_channels)
        self.conv_in = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, (2 if scale_shift else 1) * out_channels)
        self.norm_out = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv_out = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(F.silu(self.norm_in(x)))
        e = self.emb_proj(F.silu(emb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm_out(h) * (1 + scale) + shift
        else:
            h = self.norm_out(h + e)
        h = self.conv_out(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the ``H W`` positions: ``x + proj(softmax(q k^T / sqrt(d)) v)``."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise UserError(f"{channels} channels do not split into {num_heads} attention heads"
                            + (" (UNet.head_channels is wider than the level)" if num_heads < 1 else ""),
                            "UNet.num_heads / UNet.head_channels",
                            "choose a head count (or head width) that divides every attended level's width")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_init(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)                      # [B, HW, C]
        q, k, v = self.qkv(tokens).view(b, h * w, 3, self.num_heads, c // self.num_heads).unbind(2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = self.proj(out.transpose(1, 2).reshape(b, h * w, c))
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour upsampling then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class LabelEmbedding(nn.Module):
    """Class embedding with a null class for classifier-free guidance (Ho & Salimans 2022).

    Rows ``0..K-1`` embed the classes and row ``K`` is the null label. In
    training, each label is replaced by the null label with probability
    ``label_dropout``; ``cond=None`` gives the null label to the whole batch
    (the unconditional branch).
    """

    def __init__(self, num_classes: int, dim: int, label_dropout: float = 0.0):
        super().__init__()
        if not 0.0 <= label_dropout < 1.0:
            raise UserError(f"label_dropout = {label_dropout} is not a probability in [0, 1)",
                            "label_dropout", "bind label_dropout to a value in [0, 1), e.g. 0.1")
        self.num_classes, self.label_dropout = num_classes, label_dropout
        self.embedding = nn.Embedding(num_classes + 1, dim)

    def forward(self, cond: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        if cond is None:
            labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        else:
            labels = cond.long().reshape(batch)
            if self.training and self.label_dropout > 0:
                drop = torch.rand(batch, device=device) < self.label_dropout
                labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding(labels)


class Stage(nn.ModuleList):
    """Blocks applied in turn, each given the embedding: ``x <- block(x, emb)``."""

    def __init__(self, *blocks: nn.Module):
        super().__init__(blocks)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block in self:
            x = block(x, emb)
        return x


@register("network")
class UNet(nn.Module):
    """DDPM++/ADM-style U-Net (Song et al. 2021; Dhariwal & Nichol 2021) for images, with adaGN and attention.

    ``f(x, t, cond)``: time ``t`` -> sinusoidal(C) -> Linear(C, 4C) -> SiLU ->
    Linear(4C, 4C) = ``e`` (plus a learned class embedding when
    ``num_classes > 0``); ``num_res_blocks`` residual blocks per level
    conditioned on ``e`` by adaptive group norm ``GN(h)(1 + s(e)) + b(e)``,
    self-attention at ``attn_resolutions``, stride-2 down / nearest up between
    levels, skip concatenations, and a zero-initialised output conv.

    Parameter counts, measured, for the RealUID teacher configuration
    (``model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2``, 4
    heads of 64 channels at 16x16, unconditional): 38,307,203 with adaGN
    (default) and 35,746,307 with ``scale_shift=False``, which is the torchcfm
    U-Net the paper trains, block for block. The reference code's model adds
    an unused GAN discriminator head (526,081 parameters), 36,272,388 in all;
    the paper quotes 36.8M.

    Usage::

        net = UNet(model_channels=64, num_classes=10, label_dropout=0.1)
        v = net(x, t, labels)              # x [B, 3, 32, 32], t [B], labels [B]
        v_uncond = net(x, t, None)         # the null class: classifier-free guidance

    Args:
        img_channels: channels of ``x`` (and of the output).
        img_resolution: side of the square input; must be divisible by 2^(levels - 1).
        model_channels: width C of the first level.
        channel_mult: width multiplier of each level.
        num_res_blocks: residual blocks per encoder level (the decoder has one more).
        attn_resolutions: resolutions (pixels per side) with self-attention.
        num_heads: attention heads, unless ``head_channels`` is set.
        head_channels: width of each head; when set, heads = channels // head_channels.
        dropout: dropout inside residual blocks.
        num_classes: class-conditional when > 0 (labels ``cond`` in 0..num_classes-1).
        label_dropout: probability of replacing a label with the null class in training.
        scale_shift: adaptive group norm (True) or an additive embedding before the norm (False).
        time_scale: multiplies ``t`` before the sinusoidal features (1000 for t in [0, 1];
            1 reproduces torchcfm's convention of feeding t in [0, 1] unscaled).
    """

    def __init__(self, img_channels: int = 3, img_resolution: int = 32, model_channels: int = 128,
                 channel_mult: tuple[int, ...] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions: tuple[int, ...] = (16,), num_heads: int = 4,
                 head_channels: int | None = None, dropout: float = 0.1, num_classes: int = 0,
                 label_dropout: float = 0.0, scale_shift: bool = True, time_scale: float = 1000.0):
        super().__init__()
        if img_resolution % 2 ** (len(channel_mult) - 1):
            raise UserError(f"img_resolution {img_resolution} cannot be halved {len(channel_mult) - 1} times",
                            "UNet.img_resolution / UNet.channel_mult",
                            "use fewer levels in channel_mult or a resolution divisible by 2^(levels - 1)")
        self.img_channels, self.img_resolution, self.num_classes = img_channels, img_resolution, num_classes
        emb_channels = 4 * model_channels

        def heads(channels: int) -> int:
            return channels // head_channels if head_channels else num_heads

        self.time_embedding = nn.Sequential(
            SinusoidalEmbedding(model_channels, scale=time_scale),
            nn.Linear(model_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels))
        self.label_embedding = (LabelEmbedding(num_classes, emb_channels, label_dropout)
                                if num_classes else None)

        self.stem = nn.Conv2d(img_channels, model_channels, 3, padding=1)
        channels, resolution = model_channels, img_resolution
        skip_channels = [channels]
        self.encoder = nn.ModuleList()            # each stage's output is kept for the decoder
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                stage = Stage(ResBlock(channels, mult * model_channels, emb_channels, dropout, scale_shift))
                channels = mult * model_channels
                if resolution in attn_resolutions:
                    stage.append(SelfAttention(channels, heads(channels)))
                self.encoder.append(stage)
                skip_channels.append(channels)
            if level < len(channel_mult) - 1:
                self.encoder.append(Stage(Downsample(channels)))
                resolution //= 2
                skip_channels.append(channels)

        self.middle = Stage(ResBlock(channels, channels, emb_channels, dropout, scale_shift),
                            SelfAttention(channels, heads(channels)),
                            ResBlock(channels, channels, emb_channels, dropout, scale_shift))

        self.decoder = nn.ModuleList()            # each stage first concatenates one kept activation
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                stage = Stage(ResBlock(channels + skip_channels.pop(), mult * model_channels,
                                       emb_channels, dropout, scale_shift))
                channels = mult * model_channels
                if resolution in attn_resolutions:
                    stage.append(SelfAttention(channels, heads(channels)))
                if level > 0 and i == num_res_blocks:
                    stage.append(Upsample(channels))
                    resolution *= 2
                self.decoder.append(stage)

        self.head = nn.Sequential(group_norm(channels), nn.SiLU(),
                                  zero_init(nn.Conv2d(channels, img_channels, 3, padding=1)))

    @staticmethod
    def functional_arguments(kwargs: dict) -> dict:
        """The arguments that decide the function the weights compute: ``num_heads`` is inert when
        ``head_channels`` is given, dropout rates act in training only."""
        inert = {"num_heads"} if kwargs.get("head_channels") is not None else set()
        return {k: v for k, v in kwargs.items() if k not in inert and "dropout" not in k}

    #: methods besides ``forward`` that run the network's weights (FSDP gathers the weights for them too)
    forward_methods = ("features",)

    def compile_regions(self) -> list[nn.Module]:
        """The blocks compiled one by one under regional compilation (``TrainingLoop.compile = 'regional'``)."""
        return [*self.encoder, self.middle, *self.decoder]

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def bottleneck_channels(self) -> int:
        """Channels of :meth:`features` (the width of the last level)."""
        return self.middle[0].conv_in.out_channels

    def features(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's bottleneck activation at ``(x, t, cond)``: stem, encoder stages and the middle block.

        ``[B, C_last, R / 2^(L-1), R / 2^(L-1)]`` (``C_last = model_channels * channel_mult[-1]``, ``L`` levels).
        The same modules :meth:`forward` runs before its decoder, so a head on these features shares the
        encoder's weights (a discriminator on the fake network's features, DMD2-style: ``UNetDiscriminator``).
        """
        return self._encode(x, t, cond)[0]

    def _encode(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None):
        """(bottleneck activation, kept encoder activations, embedding) of ``(x, t, cond)``."""
        batch = x.shape[0]
        # the time embedding in float32 at least (bf16 inputs), float64 in a float64 run
        dtype = torch.promote_types(x.dtype, torch.float32)
        t = torch.as_tensor(t, dtype=dtype, device=x.device).reshape(-1).expand(batch)
        emb = self.time_embedding(t)
        if self.label_embedding is None and cond is not None:
            raise UserError("UNet was given class labels but is unconditional (num_classes = 0)",
                            "UNet.num_classes", "bind UNet.num_classes to the number of classes, or pass cond=None")
        if self.label_embedding is not None:
            emb = emb + self.label_embedding(cond, batch, x.device)

        h = self.stem(x)
        skips = [h]
        for stage in self.encoder:
            h = stage(h, emb)
            skips.append(h)
        return self.middle(h, emb), skips, emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h, skips, emb = self._encode(x, t, cond)
        for stage in self.decoder:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb)
        return self.head(h)
