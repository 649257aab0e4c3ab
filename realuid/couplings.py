"""Couplings: how the other end x1 of a path is paired with data (DESIGN §1, §5)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from realuid.data.base import Batch
from realuid.errors import UserError, check_range
from realuid.components import register


@dataclass
class CoupledBatch:
    """The other end ``x1`` [B, ...] and the condition ``cond`` that generator and fields see."""

    x1: torch.Tensor
    cond: object = None


class Coupling(ABC):
    """pi(x0, x1): draws x1 for a batch, given the real batch when the coupling needs it."""

    #: whether :meth:`sample` needs the real batch (paired couplings)
    needs_data: bool = False
    #: whether x1 is a corrupted copy of the same x0 (what bridges need); ``cond`` is then x1
    paired: bool = False

    @abstractmethod
    def sample(self, real: Batch | None, n: int, shape: tuple[int, ...], generator: torch.Generator,
               device: torch.device | str) -> CoupledBatch:
        """x1 for n samples of the given per-sample shape.

        ``real`` holds all n samples when :attr:`needs_data`; otherwise it may hold only one rank's rows
        of them (data parallelism): x1 has n rows all the same, and ``cond`` as many rows as ``real``.
        """


@register("coupling")
class IndependentGaussian(Coupling):
    """pi = p0 x N(0, I): x1 is standard Gaussian noise, independent of x0; labels pass through as cond."""

    def sample(self, real, n, shape, generator, device):
        x1 = torch.randn(n, *shape, generator=generator, device=device)
        return CoupledBatch(x1=x1, cond=None if real is None else real.label)


# -- paired couplings (bridges) -----------------------------------------------------------------------
class PairedCoupling(Coupling):
    """x1 = D(x0) (+ noise) for the real batch x0: the corrupted end of a bridge; ``cond = x1``.

    The generator of a bridge sees the corrupted end through ``cond``
    (``x0 = G(z, x1)``, :mod:`realuid.paths.bridge`); class labels are not carried.
    """

    needs_data = True
    paired = True

    @abstractmethod
    def degrade(self, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The corrupted copy x1 of a batch x0 (same shape)."""

    def sample(self, real, n, shape, generator, device):
        if real is None:
            raise ValueError(f"{type(self).__name__} pairs x1 with real data: sample() needs the real batch")
        x1 = self.degrade(real.x, generator)
        return CoupledBatch(x1=x1, cond=x1)


@register("coupling")
class PairedDegradation(PairedCoupling):
    """Linear-Gaussian paired coupling for vectors: x1 = M x0 + s n, n ~ N(0, I); cond = x1 (bridges).

    With a Gaussian-mixture ``x0`` the pair ``(x_t, x1)`` of a Brownian bridge
    is jointly Gaussian given the mode, so ``E[x0 | x_t, x1]`` is closed form
    (DESIGN §6; :class:`~realuid.teachers.AnalyticTeacher`).

    Args:
        matrix: M, a D x D list of rows; None is the identity.
        noise_std: s >= 0 (s = 0 needs an invertible M for the exact teacher).
    """

    def __init__(self, matrix: Sequence[Sequence[float]] | None = None, noise_std: float = 0.5):
        check_range(noise_std, "PairedDegradation.noise_std", 0.0)
        self.noise_std = float(noise_std)
        self.matrix = None
        if matrix is not None:
            try:
                m = torch.as_tensor(matrix, dtype=torch.float64)
            except (TypeError, ValueError) as err:
                raise UserError(f"PairedDegradation.matrix must be a D x D list of numbers ({err})",
                                "PairedDegradation.matrix", "bind it as [[m11, m12], [m21, m22]]") from None
            if m.ndim != 2 or m.shape[0] != m.shape[1] or not bool(torch.isfinite(m).all()):
                raise UserError(f"PairedDegradation.matrix must be a finite square D x D matrix, got shape "
                                f"{tuple(m.shape)}", "PairedDegradation.matrix",
                                "give one row of D numbers per data coordinate")
            self.matrix = m

    def linear_map(self, dim: int) -> tuple[torch.Tensor, float]:
        """(M as a float64 D x D tensor, s), checking M against the data's dimension."""
        if self.matrix is None:
            return torch.eye(dim, dtype=torch.float64), self.noise_std
        if self.matrix.shape[0] != dim:
            raise UserError(f"PairedDegradation.matrix is {self.matrix.shape[0]} x {self.matrix.shape[0]} but the "
                            f"data has dimension {dim}", "PairedDegradation.matrix",
                            f"give a {dim} x {dim} matrix")
        return self.matrix, self.noise_std

    def degrade(self, x0, generator):
        if x0.ndim != 2:
            raise UserError(f"PairedDegradation is for vector data, got samples of shape {tuple(x0.shape[1:])}",
                            "DistillationTrainer.coupling", "use @ImageDegradation() for images")
        m, s = self.linear_map(x0.shape[1])
        x1 = x0 @ m.to(device=x0.device, dtype=x0.dtype).T
        if s > 0:
            x1 = x1 + s * torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return x1

    def __repr__(self):
        m = None if self.matrix is None else self.matrix.tolist()
        return f"PairedDegradation(matrix={m}, noise_std={self.noise_std})"


IMAGE_DEGRADATIONS = ("downsample", "blur", "inpaint", "grey")


@register("coupling")
class ImageDegradation(PairedCoupling):
    """Paired image corruption for bridges: downsample-upsample, Gaussian blur, random-mask inpainting or grey.

    ``kind``:

    - ``"downsample"``: average-pool by ``factor``, then nearest-neighbour
      upsampling back to the input size (super-resolution);
    - ``"blur"``: Gaussian blur of standard deviation ``blur_sigma`` pixels
      (kernel ``2 ceil(3 sigma) + 1``, reflected borders), per channel;
    - ``"inpaint"``: each pixel (all channels together) is set to ``fill`` with
      probability ``mask_ratio``, a fresh mask per image;
    - ``"grey"``: ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` copied to the
      three channels (colourisation; needs 3 channels).

    Then ``noise_std * n`` (n ~ N(0, I)) is added. Images are ``[B, C, H, W]``.

    Args:
        kind: one of ``"downsample"``, ``"blur"``, ``"inpaint"``, ``"grey"``.
        factor: the downsampling factor (an integer >= 2 dividing H and W).
        blur_sigma: the blur's standard deviation in pixels (> 0).
        mask_ratio: the share of masked pixels, in (0, 1).
        fill: the value of masked pixels.
        noise_std: Gaussian noise added after the corruption (>= 0).
    """

    def __init__(self, kind: str = "downsample", factor: int = 2, blur_sigma: float = 1.5, mask_ratio: float = 0.5,
                 fill: float = 0.0, noise_std: float = 0.0):
        if kind not in IMAGE_DEGRADATIONS:
            raise UserError(f"ImageDegradation.kind = {kind!r} is not a degradation", "ImageDegradation.kind",
                            f"use one of {', '.join(repr(k) for k in IMAGE_DEGRADATIONS)}")
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
            raise UserError(f"ImageDegradation.factor must be an integer >= 2, got {factor!r}",
                            "ImageDegradation.factor", "bind ImageDegradation.factor = 2 (or 4, ...)")
        check_range(blur_sigma, "ImageDegradation.blur_sigma", 0.0, low_open=True)
        check_range(mask_ratio, "ImageDegradation.mask_ratio", 0.0, 1.0, low_open=True, high_open=True)
        check_range(fill, "ImageDegradation.fill")
        check_range(noise_std, "ImageDegradation.noise_std", 0.0)
        self.kind, self.factor, self.blur_sigma = kind, factor, float(blur_sigma)
        self.mask_ratio, self.fill, self.noise_std = float(mask_ratio), float(fill), float(noise_std)

    def degrade(self, x0, generator):
        if x0.ndim != 4:
            raise UserError(f"ImageDegradation needs images [B, C, H, W], got samples of shape {tuple(x0.shape[1:])}",
                            "DistillationTrainer.coupling", "use @PairedDegradation() for vector data")
        x1 = getattr(self, f"_{self.kind}")(x0, generator)
        if self.noise_std > 0:
            x1 = x1 + self.noise_std * torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        return x1

    def _downsample(self, x, generator):
        h, w = x.shape[-2:]
        if h % self.factor or w % self.factor:
            raise UserError(f"ImageDegradation.factor = {self.factor} does not divide the image size {h} x {w}",
                            "ImageDegradation.factor", "choose a factor that divides the height and width")
        low = F.avg_pool2d(x, self.factor)
        return F.interpolate(low, scale_factor=self.factor, mode="nearest")

    def blur_kernel(self, dtype=torch.float64, device="cpu") -> torch.Tensor:
        """The normalised 1-D Gaussian kernel of the blur."""
        radius = math.ceil(3 * self.blur_sigma)
        offsets = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
        k = torch.exp(-0.5 * (offsets / self.blur_sigma) ** 2)
        return k / k.sum()

    def _blur(self, x, generator):
        c, h, w = x.shape[1:]
        k = self.blur_kernel(x.dtype, x.device)
        radius = (len(k) - 1) // 2
        if radius >= min(h, w):
            raise UserError(f"ImageDegradation.blur_sigma = {self.blur_sigma} needs a kernel wider than the "
                            f"{h} x {w} image", "ImageDegradation.blur_sigma", "lower blur_sigma")
        x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    def _inpaint(self, x, generator):
        b, _, h, w = x.shape
        keep = torch.rand(b, 1, h, w, generator=generator, device=x.device) >= self.mask_ratio
        return torch.where(keep, x, torch.full_like(x, self.fill))

    def _grey(self, x, generator):
        if x.shape[1] != 3:
            raise UserError(f"ImageDegradation.kind = 'grey' needs 3 colour channels, got {x.shape[1]}",
                            "ImageDegradation.kind", "use colour images or another kind")
        luma = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * luma).sum(1, keepdim=True).expand_as(x).contiguous()

    def __repr__(self):
        return f"ImageDegradation(kind={self.kind!r}, noise_std={self.noise_std})"


# -- minibatch optimal transport ------------------------------------------------------------------------
def linear_sum_assignment(cost: torch.Tensor | np.ndarray) -> torch.Tensor:
    """An exact minimum-cost perfect matching of a square cost matrix: ``col[i]`` is row i's column.

    Shortest augmenting paths with dual potentials (the Hungarian method in
    the form of Jonker & Volgenant, 1987): rows are inserted one at a time,
    each by a Dijkstra search over reduced costs ``c_ij - u_i - v_j >= 0``.
    Cost: O(n^3) time in the worst case (n insertions, each at most n
    vectorised O(n) relaxation steps), O(n^2) memory; exact up to floating-point
    ties. A 512 x 512 batch takes well under a second on one CPU core.
    """
    c = np.asarray(cost.detach().cpu().double().numpy() if isinstance(cost, torch.Tensor) else cost,
                   dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"linear_sum_assignment needs a square cost matrix, got shape {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("linear_sum_assignment needs finite costs")
    n = c.shape[0]
    u = np.zeros(n + 1)
    v = np.zeros(n + 1)
    row_of = np.zeros(n + 1, dtype=np.int64)  # row_of[j]: the row (1-based) matched to column j; 0 = free
    way = np.zeros(n + 1, dtype=np.int64)
    padded = np.zeros((n + 1, n + 1))
    padded[1:, 1:] = c
    for i in range(1, n + 1):
        row_of[0] = i
        j0 = 0
        min_v = np.full(n + 1, np.inf)
        used = np.zeros(n + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = row_of[j0]
            free = ~used
            free[0] = False
            reduced = padded[i0] - u[i0] - v
            better = free & (reduced < min_v)
            min_v[better] = reduced[better]
            way[better] = j0
            candidates = np.where(free, min_v, np.inf)
            j1 = int(np.argmin(candidates))
            delta = candidates[j1]
            u[row_of[used]] += delta
            v[used] -= delta
            min_v[free] -= delta
            j0 = j1
            if row_of[j0] == 0:
                break
        while j0:  # augment along the path
            j1 = way[j0]
            row_of[j0] = row_of[j1]
            j0 = j1
    col = np.empty(n, dtype=np.int64)
    col[row_of[1:] - 1] = np.arange(n)
    return torch.from_numpy(col)


@register("coupling")
class MinibatchOT(Coupling):
    """Minibatch optimal-transport coupling: Gaussian x1 re-paired with the real batch by an exact assignment.

    Draws ``x1 ~ N(0, I)`` for the batch and permutes it to minimise
    ``sum_i ||x0_i - x1_sigma(i)||^2`` over permutations sigma (exact, by
    :func:`linear_sum_assignment`, O(B^3)); Tong et al. 2023 (OT-CFM),
    Pooladian et al. 2023. The pairing concerns the real batch: in
    distillation the generated ``x0 = G(z)`` is drawn after the coupling and
    stays independent of x1; the real term of RealUID sees the OT pairs. Labels
    pass through as cond. An analytic teacher assumes the independent coupling.
    """

    needs_data = True

    def sample(self, real, n, shape, generator, device):
        if real is None:
            raise ValueError("MinibatchOT pairs noise with real data: sample() needs the real batch")
        x1 = torch.randn(n, *shape, generator=generator, device=device)
        x0 = real.x.reshape(n, -1).double()
        cost = torch.cdist(x0, x1.reshape(n, -1).double()) ** 2
        return CoupledBatch(x1=x1[linear_sum_assignment(cost).to(device)], cond=real.label)
