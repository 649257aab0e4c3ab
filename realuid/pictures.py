"""Pictures of a run: image value conversions (uint8 <-> [-1, 1]) and PNGs (scatter plots, grids; PIL only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def images_to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] or [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]; float input is returned clamped."""
    if images.dtype != torch.uint8:
        return images.float().clamp(-1, 1)
    if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.permute(0, 3, 1, 2)
    return images.float() / 127.5 - 1.0


def quantize(samples: torch.Tensor) -> torch.Tensor:
    """Samples as they would be saved: float in [-1, 1] NCHW -> uint8 NCHW; uint8 NHWC -> uint8 NCHW."""
    if samples.dtype == torch.uint8:
        if samples.ndim == 4 and samples.shape[-1] in (1, 3) and samples.shape[1] not in (1, 3):
            samples = samples.permute(0, 3, 1, 2)
        return samples.contiguous()
    return ((samples.float().clamp(-1, 1) + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)


def scatter_png(samples: torch.Tensor, path: Path, log_density=None, size: int = 512,
                reference: torch.Tensor | None = None, max_points: int = 5000) -> None:
    """Draw 2-D ``samples`` (red) over ``log_density`` (grey shading) and optional ``reference`` (blue).

    ``log_density`` is a callable on [N, 2] float64 tensors; the view covers
    the samples' and the reference's central 99% with a margin.
    """
    x = samples.detach().double().cpu()[:max_points]
    x = x[torch.isfinite(x).all(1)]
    pts = x if reference is None else torch.cat([x, reference.double().cpu()[:max_points]])
    if len(pts) == 0:
        pts = torch.zeros(1, 2, dtype=torch.float64)
    lo = torch.quantile(pts, 0.005, dim=0)
    hi = torch.quantile(pts, 0.995, dim=0)
    centre, half = (lo + hi) / 2, float((hi - lo).max()) * 0.6 + 1e-3

    def to_pixels(p: torch.Tensor) -> np.ndarray:
        q = (p - centre) / (2 * half) + 0.5
        return np.stack([q[:, 0] * size, (1 - q[:, 1]) * size], axis=1)

    image = Image.new("RGB", (size, size), "white")
    if log_density is not None:
        g = torch.linspace(-1, 1, size, dtype=torch.float64) * half
        gx, gy = torch.meshgrid(centre[0] + g, centre[1] - g, indexing="xy")
        dens = torch.exp(log_density(torch.stack([gx.reshape(-1), gy.reshape(-1)], 1))).reshape(size, size)
        shade = (255 - 120 * (dens / dens.max()).sqrt()).clamp(0, 255).to(torch.uint8).numpy()
        image = Image.fromarray(np.stack([shade] * 3, axis=-1))
    draw = ImageDraw.Draw(image)
    for colour, cloud in (("#1f5fbf", reference), ("#d62728", x)):
        if cloud is None:
            continue
        for px, py in to_pixels(cloud.double().cpu()[:max_points]):
            draw.ellipse([px - 1.2, py - 1.2, px + 1.2, py + 1.2], fill=colour)
    image.save(path)


def image_grid_png(images: torch.Tensor, path: Path, columns: int | None = None) -> None:
    """Save images [N, C, H, W] in [-1, 1] as one PNG grid (``columns`` defaults to sqrt(N))."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    columns = columns or max(1, int(np.ceil(np.sqrt(n))))
    rows = int(np.ceil(n / columns))
    grid = torch.zeros(c, rows * h, columns * w, dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, columns)
        grid[:, r * h:(r + 1) * h, k * w:(k + 1) * w] = x[i]
    array = grid.permute(1, 2, 0).numpy()
    Image.fromarray(array[..., 0] if c == 1 else array).save(path)
