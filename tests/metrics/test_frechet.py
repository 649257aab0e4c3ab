"""The Fréchet distance against closed forms and an independent eigenvalue route; precision/recall at extremes."""

from __future__ import annotations

import pytest
import torch

from realuid.metrics.frechet import frechet_distance, gaussian_statistics, precision_recall


def random_covariance(d: int, generator: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=generator, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_diagonal_closed_form():
    """Diagonal covariances: FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.5])
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = (mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum()   # 7.25 + 4 + 1 = 12.25
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected.item(), rel=1e-12)
    assert expected.item() == pytest.approx(12.25)


def test_frechet_distance_full_covariances_against_eigenvalues_of_product():
    """tr((S1^1/2 S2 S1^1/2)^1/2) = sum sqrt(eig(S1 S2)): an independent route through a non-symmetric matrix."""
    g = torch.Generator().manual_seed(0)
    s1, s2 = random_covariance(20, g), random_covariance(20, g)
    mu1, mu2 = torch.randn(20, generator=g, dtype=torch.float64), torch.randn(20, generator=g, dtype=torch.float64)
    cross = torch.linalg.eigvals(s1 @ s2).real.clamp(min=0).sqrt().sum()
    expected = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * cross
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected.item(), rel=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = torch.randn(2000, 32, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.1, 3, 32)
    mu, sigma = gaussian_statistics(features)
    assert frechet_distance(mu, sigma, mu, sigma) < 1e-9
    # and a shifted copy is at exactly the squared shift
    mu2, sigma2 = gaussian_statistics(features + 0.5)
    assert frechet_distance(mu, sigma, mu2, sigma2) == pytest.approx(32 * 0.25, rel=1e-6)


def test_gaussian_statistics_match_numpy_cov():
    import numpy as np

    features = torch.randn(500, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mu, sigma = gaussian_statistics(features)
    assert torch.allclose(sigma, torch.from_numpy(np.cov(features.numpy(), rowvar=False)), atol=1e-12)
    assert torch.allclose(mu, features.mean(0))


def test_precision_recall_extremes():
    g = torch.Generator().manual_seed(3)
    real = torch.randn(400, 8, generator=g)
    assert precision_recall(real, real.clone(), k=3) == (1.0, 1.0)
    far = torch.randn(400, 8, generator=g) + 100.0
    assert precision_recall(real, far, k=3) == (0.0, 0.0)
    # a fake set drawn from half of the real one: every fake point is real, but the real points far on the
    # other side (x_0 < -1, 16% of them) lie outside every fake k-NN ball
    half = real[real[:, 0] > 0]
    precision, recall = precision_recall(real, half, k=3)
    assert precision == 1.0 and 0.5 < recall < 0.9
    far_side = real[real[:, 0] < -1]
    assert precision_recall(half, far_side, k=3)[0] < 0.1
