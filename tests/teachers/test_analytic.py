"""The exact Gaussian-mixture teacher: its flow-matching field minimises the matching loss, and its bridge
posterior mean equals direct Gaussian conditioning."""

from __future__ import annotations

import math

import pytest
import torch

from realuid.context import RunContext
from realuid.data.gmm import GaussianMixture
from realuid.paths import RectifiedFlow
from realuid.teachers.analytic import AnalyticTeacher, bridge_posterior_mean

MEANS = [[-4.0, 0.0], [4.0, 0.0], [0.0, 6.928203]]


def _matching_excess(field, mixture, path, perturb, n=200_000, seed=0):
    """(L(f + d) - L(f), E w ||d||^2, standard error) on one float64 batch of the FM matching loss."""
    g = torch.Generator().manual_seed(seed)
    x0, _ = mixture.sample(n, g)
    x1 = torch.randn(n, 2, dtype=torch.float64, generator=g)
    t = path.t_min + (path.t_max - path.t_min) * torch.rand(n, dtype=torch.float64, generator=g)
    s = path.interpolate(x0, x1, t)
    target = path.target(s, "velocity")
    f = field(s.x_t, t)
    d = perturb(s.x_t, t)
    w = path.weight(t, "velocity")
    excess = w * (((f + d - target) ** 2).sum(-1) - ((f - target) ** 2).sum(-1))
    return float(excess.mean()), float((w * (d**2).sum(-1)).mean()), float(excess.std() / n**0.5)


PERTURBATIONS = {
    "constant": lambda x, t: torch.tensor([0.3, -0.2], dtype=torch.float64).expand_as(x),
    "linear": lambda x, t: 0.3 * x.flip(-1) * t[:, None],
    "nonlinear": lambda x, t: 0.2 * torch.sin(x) * (1 - t[:, None]),
}


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_exact_fm_field_minimises_the_matching_loss(name):
    """L(f_exact + d) - L(f_exact) = E w ||d||^2: the cross term 2 E w <d, f - f_c> vanishes at the minimiser."""
    mixture, path = GaussianMixture(MEANS, 0.5), RectifiedFlow()
    context = RunContext(path, "velocity", mixture)
    teacher = AnalyticTeacher().attach(context)
    excess, expected, stderr = _matching_excess(teacher, mixture, path, PERTURBATIONS[name])
    assert abs(excess - expected) < 4 * stderr + 1e-12, (excess, expected, stderr)

    # calibration: the field of a different mixture is not the minimiser, and the same check says so
    wrong = AnalyticTeacher(GaussianMixture(MEANS, 0.5, weights=[6.0, 1.0, 1.0])).attach(context)
    excess, expected, stderr = _matching_excess(wrong, mixture, path, PERTURBATIONS[name])
    assert abs(excess - expected) > 4 * stderr, (excess, expected, stderr)


def test_bridge_teacher_matches_direct_gaussian_conditioning():
    """One mode: E[x0 | x_t, x1] from the joint Gaussian of (x0, x1, x_t), computed independently."""
    mu = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    cov = torch.tensor([[[1.0, 0.3], [0.3, 0.5]]], dtype=torch.float64)
    mixture = GaussianMixture(mu.tolist(), stds=None, covs=cov.tolist())
    m = torch.tensor([[0.5, 0.2], [-0.1, 1.0]], dtype=torch.float64)
    s, t = 0.3, 0.4
    a, b, g = 1 - t, t, math.sqrt(0.7 * t * (1 - t))
    # joint of (x0, x1, x_t): linear maps of (x0, n, z)
    eye = torch.eye(2, dtype=torch.float64)
    zero = torch.zeros(2, 2, dtype=torch.float64)
    lin = torch.cat([torch.cat([eye, zero, zero], 1), torch.cat([m, s * eye, zero], 1),
                     torch.cat([a * eye + b * m, b * s * eye, g * eye], 1)], 0)
    src = torch.block_diag(cov[0], eye, eye)
    joint = lin @ src @ lin.T
    gen = torch.Generator().manual_seed(0)
    x1, x_t = (torch.randn(7, 2, dtype=torch.float64, generator=gen) for _ in range(2))
    obs = torch.cat([x1, x_t], 1)
    mean_obs = torch.cat([mu[0] @ m.T, mu[0] @ (a * eye + b * m).T])
    direct = mu[0] + (joint[:2, 2:] @ torch.linalg.solve(joint[2:, 2:], (obs - mean_obs).T)).T
    ours = bridge_posterior_mean(mixture, x_t, x1, a, b, g, m, s)
    assert torch.allclose(ours, direct, rtol=1e-12, atol=1e-12)
    # calibration: conditioning on x_t alone (ignoring x1) gives a different answer
    assert not torch.allclose(ours, mixture.posterior_mean(x_t, torch.full((7,), a), torch.full((7,), g**2 + b**2)),
                              atol=1e-3)
