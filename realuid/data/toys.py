"""Two-dimensional toy distributions (no closed-form teacher; train one with the matching loss)."""

from __future__ import annotations

import math

import torch

from realuid.data.base import ALL_ROWS, Batch, DataSource
from realuid.components import register


class _Toy2D(DataSource):
    """A 2-D point cloud drawn by :meth:`draw` from the source's own generator."""

    shape = (2,)

    def __init__(self, noise: float = 0.05):
        self.noise = noise
        self._rng = torch.Generator().manual_seed(0)

    def draw(self, n: int) -> torch.Tensor:
        raise NotImplementedError

    def seed(self, seed):
        self._rng.manual_seed(int(seed))

    def next_batch(self, n, device="cpu", rows=ALL_ROWS):
        x = self.draw(n) + self.noise * torch.randn(n, 2, generator=self._rng, dtype=torch.float64)
        return Batch(x[rows].to(device=device, dtype=torch.get_default_dtype()))

    def state_dict(self):
        return {"rng": self._rng.get_state()}

    def load_state_dict(self, state):
        self._rng.set_state(state["rng"])


@register("data")
class TwoMoons(_Toy2D):
    """Two interleaved half circles of radius 1 (scaled by ``scale``), plus Gaussian noise."""

    def __init__(self, noise: float = 0.05, scale: float = 2.0):
        super().__init__(noise)
        self.scale = scale

    def draw(self, n):
        angle = math.pi * torch.rand(n, generator=self._rng, dtype=torch.float64)
        upper = torch.rand(n, generator=self._rng) < 0.5
        x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
        y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
        return self.scale * torch.stack([x - 0.5, y - 0.25], dim=-1)


@register("data")
class Rings(_Toy2D):
    """Concentric circles of radii ``radii``, points spread uniformly in angle."""

    def __init__(self, noise: float = 0.05, radii: tuple[float, ...] = (1.0, 2.0, 3.0)):
        super().__init__(noise)
        self.radii = torch.as_tensor(radii, dtype=torch.float64)

    def draw(self, n):
        r = self.radii[torch.randint(len(self.radii), (n,), generator=self._rng)]
        angle = 2 * math.pi * torch.rand(n, generator=self._rng, dtype=torch.float64)
        return torch.stack([r * angle.cos(), r * angle.sin()], dim=-1)


@register("data")
class Checkerboard(_Toy2D):
    """Uniform on the dark squares of a ``cells`` x ``cells`` board of side ``size``."""

    def __init__(self, noise: float = 0.0, cells: int = 4, size: float = 4.0):
        super().__init__(noise)
        self.cells, self.size = cells, size

    def draw(self, n):
        ij = torch.cartesian_prod(torch.arange(self.cells), torch.arange(self.cells))
        dark = ij[(ij.sum(-1) % 2) == 0]
        cells = dark[torch.randint(len(dark), (n,), generator=self._rng)]
        u = torch.rand(n, 2, generator=self._rng, dtype=torch.float64)
        side = self.size / self.cells
        return (cells.double() + u) * side - self.size / 2
