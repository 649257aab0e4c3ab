"""Small heads used by objectives (a discriminator for the optional adversarial term)."""

from __future__ import annotations

import torch
from torch import nn

from realuid.errors import UserError
from realuid.networks.embeddings import SinusoidalEmbedding
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
