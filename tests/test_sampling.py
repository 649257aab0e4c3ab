"""The samplers of trained teachers against the exact Gaussian-mixture teacher, whose probability-flow ODE is
known (DESIGN §6): Euler and Heun converge at their orders, Heun on EDM's Karras grid, the guidance formula."""

from __future__ import annotations

import torch

from realuid.context import RunContext
from realuid.data.gmm import GaussianMixture
from realuid.paths import EDM, RectifiedFlow
from realuid.sampling import guided, sample_teacher
from realuid.teachers.analytic import AnalyticTeacher


def mixture_teacher(path):
    data = GaussianMixture(means=[[-3.0, 0.0], [3.0, 0.0]], stds=0.5)
    return data, AnalyticTeacher().attach(RunContext(path, "velocity", data))


def mode_statistics(x: torch.Tensor) -> tuple[float, float, float]:
    """(weight of the right mode, worst |mean error| of a mode, worst |std - 0.5| of a mode)."""
    right = x[:, 0] > 0
    means, stds = [], []
    for mask, centre in ((right, 3.0), (~right, -3.0)):
        mode = x[mask]
        means.append(max(abs(float(mode[:, 0].mean()) - centre), abs(float(mode[:, 1].mean()))))
        stds.append(float((mode.std(0) - 0.5).abs().max()))
    return float(right.double().mean()), max(means), max(stds)


def test_euler_and_heun_converge_to_the_mixture_and_heun_wins_at_equal_nfe():
    torch.manual_seed(0)
    path = RectifiedFlow(t_min=1e-3, t_max=1.0)
    _, teacher = mixture_teacher(path)
    z = torch.randn(2000, 2, dtype=torch.float64)
    reference = sample_teacher(teacher, "velocity", path, z, nfe=256, solver="heun")   # error ~ 1/64 of NFE 32's
    errors, samples = {}, {}
    for solver in ("euler", "heun"):
        for nfe in (4, 8, 16, 32):
            samples[solver, nfe] = x = sample_teacher(teacher, "velocity", path, z, nfe=nfe, solver=solver)
            errors[solver, nfe] = float((x - reference).norm(dim=1).mean())
    for solver in ("euler", "heun"):
        series = [errors[solver, n] for n in (4, 8, 16, 32)]
        assert all(b < a for a, b in zip(series, series[1:])), (solver, series)
    for nfe in (4, 8, 16, 32):
        assert errors["heun", nfe] < 0.5 * errors["euler", nfe], errors
    assert errors["euler", 32] / errors["euler", 16] > 0.45          # first order: error halves with NFE
    assert errors["heun", 32] / errors["heun", 16] < 0.4             # second order: near a quarter

    weight, mean_error, std_error = mode_statistics(samples["heun", 32])
    assert abs(weight - 0.5) < 0.04 and mean_error < 0.06 and std_error < 0.05
    # one Euler step from t = 1 lands on E[x0] = 0 for every z: far from the mixture, so the check can fail
    weight, mean_error, std_error = mode_statistics(sample_teacher(teacher, "velocity", path, z, nfe=1,
                                                                   solver="euler"))
    assert mean_error > 2.0


def test_heun_on_the_edm_path_with_the_karras_grid():
    torch.manual_seed(1)
    path = EDM(sigma_data=3.0)
    _, teacher = mixture_teacher(path)
    z = torch.randn(2000, 2, dtype=torch.float64)
    weight, mean_error, std_error = mode_statistics(sample_teacher(teacher, "velocity", path, z, nfe=35))
    assert abs(weight - 0.5) < 0.04 and mean_error < 0.06 and std_error < 0.05


def test_classifier_free_guidance_formula():
    def field(x, t, cond=None):
        return torch.full_like(x, 1.0) if cond is None else x + cond[:, None].to(x.dtype)

    x, t, cond = torch.zeros(3, 2), torch.ones(3), torch.tensor([0, 1, 2])
    out = guided(field, 2.5)(x, t, cond)                       # f_u + s (f_c - f_u)
    assert torch.allclose(out, 1.0 + 2.5 * (cond[:, None].float() - 1.0).expand(3, 2))
    assert torch.equal(guided(field, 2.5)(x, t, None), torch.ones(3, 2))
    assert guided(field, 1.0) is field
