"""Diffusion Transformer (Peebles & Xie 2023) from timm blocks: ``forward(x, t, cond=None)``.

timm is imported inside the constructors, so ``import realuid`` works without it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from realuid.errors import UserError
from realuid.networks.embeddings import SinusoidalEmbedding
from realuid.networks.unet import LabelEmbedding
from realuid.components import register


def import_timm():
    """timm, or a UserError saying how to install it."""
    try:
        import timm.layers
    except ImportError as err:
        raise UserError("the DiT network needs the timm library, which is not installed", "DiT",
                        "pip install timm") from err
    return timm.layers


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation of tokens x [B, N, D] by per-sample shift, scale [B, D]: ``x (1 + scale) + shift``."""
    return x * (1 + scale[:, None]) + shift[:, None]


def sincos_2d_positions(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding [grid^2, dim] (Vaswani et al. 2017, per axis; MAE / DiT).

    Half of the channels encode the row, half the column; each half is
    ``[sin(p w_k), cos(p w_k)]`` with ``w_k = 10000^(-k / (dim / 4))``.
    """
    if dim % 4:
        raise UserError(f"DiT hidden size {dim} is not divisible by 4", "DiT.hidden",
                        "use a hidden size divisible by 4 (and by the number of heads)")
    quarter = dim // 4
    omega = torch.exp(-math.log(10000.0) * torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                                torch.arange(grid, dtype=torch.float64), indexing="ij")

    def axis(p: torch.Tensor) -> torch.Tensor:
        angle = p.reshape(-1, 1) * omega
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    return torch.cat([axis(rows), axis(cols)], dim=1).float()


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero: ``x += g1 * Attn(mod(LN(x); b1, s1)); x += g2 * MLP(mod(LN(x); b2, s2))``.

    ``(b1, s1, g1, b2, s2, g2) = Linear(SiLU(c))`` with the linear layer
    zero-initialised, so every block starts as the identity (DiT, section 3.2).
    """

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        layers = import_timm()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = layers.Attention(hidden, num_heads=heads, qkv_bias=True, proj_drop=dropout)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = layers.Mlp(hidden, int(hidden * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"),
                              drop=dropout)
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        nn.init.zeros_(self.ada_ln[1].weight)
        nn.init.zeros_(self.ada_ln[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada_ln(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """Last adaLN then a zero-initialised linear map of each token to its ``p x p x C`` patch."""

    def __init__(self, hidden: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.linear = nn.Linear(hidden, patch_size * patch_size * out_channels)
        for layer in (self.ada_ln[1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada_ln(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


@register("network")
class DiT(nn.Module):
    """Diffusion Transformer (Peebles & Xie 2023): patchify, adaLN-Zero blocks on c = emb(t) + emb(y), unpatchify.

    ``x`` [B, C, H, W] -> ``p x p`` patches -> tokens + fixed 2-D sin-cos
    positions -> ``depth`` blocks, each modulated by ``c = MLP(sinusoidal(t)) +
    E[y]`` (adaLN-Zero) -> final adaLN + linear -> patches back to
    [B, C, H, W]. Built from timm's ``PatchEmbed``, ``Attention`` and ``Mlp``.
    The defaults are DiT-S/2 (hidden 384, depth 12, 6 heads, patch 2) at 32x32.
    Class labels use a null class for classifier-free guidance, as in :class:`UNet`.

    Usage::

        net = DiT(num_classes=10, label_dropout=0.1)
        v = net(x, t, labels)              # x [B, 3, 32, 32], t [B], labels [B]

    Args:
        img_channels: channels of ``x`` (and of the output).
        img_resolution: side of the square input; divisible by ``patch_size``.
        patch_size: side of a patch (one token).
        hidden: token width.
        depth: number of transformer blocks.
        heads: attention heads per block.
        mlp_ratio: MLP width / hidden.
        dropout: dropout after attention and in the MLP.
        num_classes: class-conditional when > 0.
        label_dropout: probability of replacing a label with the null class in training.
        time_scale: multiplies ``t`` before the sinusoidal features (1000 for t in [0, 1]).
    """

    def __init__(self, img_channels: int = 3, img_resolution: int = 32, patch_size: int = 2,
                 hidden: int = 384, depth: int = 12, heads: int = 6, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, num_classes: int = 0, label_dropout: float = 0.0,
                 time_scale: float = 1000.0):
        super().__init__()
        layers = import_timm()
        if img_resolution % patch_size:
            raise UserError(f"img_resolution {img_resolution} is not a multiple of patch_size {patch_size}",
                            "DiT.patch_size", "choose a patch size that divides the image side")
        if hidden % heads:
            raise UserError(f"hidden size {hidden} does not split into {heads} heads", "DiT.hidden / DiT.heads",
                            "choose a hidden size divisible by the number of heads")
        self.img_channels, self.patch_size, self.num_classes = img_channels, patch_size, num_classes
        self.grid = img_resolution // patch_size

        self.patch_embed = layers.PatchEmbed(img_resolution, patch_size, img_channels, hidden, bias=True)
        self.register_buffer("positions", sincos_2d_positions(self.grid, hidden)[None], persistent=False)
        self.time_embedding = nn.Sequential(SinusoidalEmbedding(256, scale=time_scale),
                                            nn.Linear(256, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label_embedding = LabelEmbedding(num_classes, hidden, label_dropout) if num_classes else None
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio, dropout) for _ in range(depth))
        self.final = FinalLayer(hidden, patch_size, img_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-uniform linear layers, patch projection as a linear map, N(0, 0.02) embeddings (DiT's init)."""
        zeroed = {id(p) for m in [*(b.ada_ln for b in self.blocks), self.final] for p in m.parameters()}
        for module in self.modules():
            if isinstance(module, nn.Linear) and id(module.weight) not in zeroed:
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        proj = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        for layer in (self.time_embedding[1], self.time_embedding[3]):
            nn.init.normal_(layer.weight, std=0.02)
        if self.label_embedding is not None:
            nn.init.normal_(self.label_embedding.embedding.weight, std=0.02)

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, p*p*C] tokens -> [B, C, H, W] image, each token filling its p x p patch."""
        b, g, p, c = tokens.shape[0], self.grid, self.patch_size, self.img_channels
        x = tokens.reshape(b, g, g, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(b, c, g * p, g * p)

    def compile_regions(self) -> list[nn.Module]:
        """The blocks compiled one by one under regional compilation (``TrainingLoop.compile = 'regional'``)."""
        return list(self.blocks)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        batch = x.shape[0]
        # the time embedding in float32 at least (bf16 inputs), float64 in a float64 run
        dtype = torch.promote_types(x.dtype, torch.float32)
        t = torch.as_tensor(t, dtype=dtype, device=x.device).reshape(-1).expand(batch)
        c = self.time_embedding(t)
        if self.label_embedding is None and cond is not None:
            raise UserError("DiT was given class labels but is unconditional (num_classes = 0)",
                            "DiT.num_classes", "bind DiT.num_classes to the number of classes, or pass cond=None")
        if self.label_embedding is not None:
            c = c + self.label_embedding(cond, batch, x.device)
        h = self.patch_embed(x) + self.positions
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final(h, c))
