"""Fréchet distance and precision/recall between two sets of features, and files of reference statistics.

Fréchet distance (Heusel et al. 2017, the distance behind FID) between the
Gaussians N(mu1, S1), N(mu2, S2) fitted to two feature sets:

    FD = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)

Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold
is the union of balls around its points of radius the distance to their k-th
nearest neighbour in the same set;

    precision = fraction of fake points inside the real manifold,
    recall    = fraction of real points inside the fake manifold.

Usage::

    mu1, sigma1 = gaussian_statistics(real_features)        # [N, D] -> [D], [D, D] (float64)
    mu2, sigma2 = gaussian_statistics(fake_features)
    frechet_distance(mu1, sigma1, mu2, sigma2)              # a float >= 0
    precision_recall(real_features, fake_features, k=3)     # (precision, recall)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


def gaussian_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and unbiased covariance [D, D] (divided by N - 1, as numpy.cov) of features [N, D], float64."""
    features = features.double()
    mu = features.mean(0)
    centred = features - mu
    return mu, centred.T @ centred / (len(features) - 1)


def sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix via ``eigh`` (negative round-off -> 0)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982).

        d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)

    ``S1^1/2 S2 S1^1/2`` is symmetric PSD and has the eigenvalues of ``S1 S2``,
    so the last trace is the sum of square roots of its eigenvalues; all in float64.
    """
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(a, dtype=torch.float64) for a in (mu1, mu2, sigma1, sigma2))
    root1 = sqrtm_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * cross
    return float(value.clamp(min=0))


def kth_neighbour_radii(features: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """Distance of each point to its k-th nearest other point in the same set."""
    radii = []
    for start in range(0, len(features), chunk):
        distances = torch.cdist(features[start:start + chunk], features)
        radii.append(distances.kthvalue(k + 1, dim=1).values)  # the 1st is the point itself (distance 0)
    return torch.cat(radii)


def coverage_fraction(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 4096) -> float:
    """Fraction of ``points`` inside at least one ball ``|p - centre_j| <= radius_j``."""
    inside = []
    for start in range(0, len(points), chunk):
        distances = torch.cdist(points[start:start + chunk], centres)
        inside.append((distances <= radii[None]).any(dim=1))
    return torch.cat(inside).float().mean().item()


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls as manifold estimates.

    precision = fraction of fake points inside the real manifold (the union of
    balls around real points of radius the distance to their k-th real
    neighbour); recall = fraction of real points inside the fake manifold.
    """
    real, fake = real.float(), fake.float()
    precision = coverage_fraction(fake, real, kth_neighbour_radii(real, k))
    recall = coverage_fraction(real, fake, kth_neighbour_radii(fake, k))
    return precision, recall


def write_statistics(path: Path, statistics: dict) -> None:
    """Save reference statistics atomically: torch ``.pt`` (weights_only-loadable) or numpy ``.npz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if path.suffix == ".npz":
        with open(tmp, "wb") as f:
            np.savez(f, **{k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
                           for k, v in statistics.items()})
    else:
        torch.save(statistics, tmp)
    os.replace(tmp, path)


def read_statistics(path: Path) -> dict | None:
    """Statistics saved by :func:`write_statistics`, or None when the file is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        if path.suffix == ".npz":
            with np.load(path) as arrays:
                return {k: (torch.from_numpy(v) if v.dtype.kind == "f" else v.item()) for k, v in arrays.items()}
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file: recompute and overwrite it
        return None
