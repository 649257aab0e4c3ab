"""Multi-layer perceptron for vector data (toy distillation)."""

from __future__ import annotations

import torch
from torch import nn

from realuid.networks.embeddings import SinusoidalEmbedding
from realuid.components import register


@register("network")
class MLP(nn.Module):
    """MLP field f(x, t, cond) for vector data: [x, emb(t), emb(cond)] -> hidden (SiLU) -> dim.

    Args:
        dim: data dimension (filled in from the data when left as None).
        hidden: width of each hidden layer.
        depth: number of hidden layers.
        time_dim: size of the sinusoidal time embedding.
        num_classes: class-conditional when > 0 (a learned embedding of the label).
        cond_dim: size of a vector condition (a bridge's corrupted end x1), concatenated to the input.
    """

    def __init__(self, dim: int | None = None, hidden: int = 64, depth: int = 3, time_dim: int = 32,
                 num_classes: int = 0, cond_dim: int = 0):
        super().__init__()
        if dim is None:
            raise ValueError("MLP.dim is unset: build the network through the trainer, which fills it "
                             "in from the data, or bind MLP.dim")
        self.dim, self.num_classes, self.cond_dim = dim, num_classes, cond_dim
        self.time_embedding = SinusoidalEmbedding(time_dim)
        self.label_embedding = nn.Embedding(num_classes, time_dim) if num_classes else None
        width_in = dim + time_dim + cond_dim + (time_dim if num_classes else 0)
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(width_in if i == 0 else hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden if depth else width_in, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        parts = [x, self.time_embedding(t)]
        if self.cond_dim:
            parts.append(cond)
        if self.label_embedding is not None:
            parts.append(self.label_embedding(cond))
        return self.net(torch.cat(parts, dim=-1))
