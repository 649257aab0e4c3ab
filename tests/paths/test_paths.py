"""The contract of every matching path: the exact field minimises the matching loss in every parameterisation,
conversions round-trip in float64, and the conditional targets are the conversions of x0."""

from __future__ import annotations

import math

import pytest
import torch

from realuid.context import RunContext
from realuid.couplings import IndependentGaussian, PairedDegradation
from realuid.data.gmm import GaussianMixture
from realuid.paths import (EDM, VE, VP, AffineFlow, BrownianBridge, CosineSchedule, LogitNormalFlow,
                           PolynomialSchedule, RectifiedFlow, SineSquaredNoise, StochasticInterpolant)
from realuid.teachers.analytic import AnalyticTeacher

MEANS = [[-4.0, 0.0], [4.0, 0.0], [0.0, 6.928203]]
BRIDGE_COUPLING = PairedDegradation([[0.0, 0.0], [0.0, 1.0]], noise_std=0.5)

PATHS = {
    "rectified": lambda: RectifiedFlow(),
    "rectified_logit_normal": lambda: LogitNormalFlow(m=1.5),
    "affine_cosine": lambda: AffineFlow(CosineSchedule()),
    "affine_poly": lambda: AffineFlow(PolynomialSchedule(2.0)),
    "vp": lambda: VP(),
    "vp_edm_weight": lambda: VP(weighting="edm", sigma_data=3.3),
    "vp_v_weight": lambda: VP(weighting="v"),
    "ve": lambda: VE(sigma_max=20.0),
    "ve_preconditioned": lambda: VE(sigma_max=20.0, weighting="x0", precondition=True, sigma_data=3.3),
    "edm": lambda: EDM(sigma_data=3.3, P_mean=0.69),
    "si_sqrt": lambda: StochasticInterpolant(),
    "si_sine": lambda: StochasticInterpolant(CosineSchedule(), SineSquaredNoise(0.5), t_min=0.01, t_max=0.99),
    "bridge": lambda: BrownianBridge(eps=1.0),
}


def _path_and_coupling(name):
    """The path and the coupling a run would give it (checked by the path, as a trainer does)."""
    path = PATHS[name]()
    coupling = BRIDGE_COUPLING if path.x1_is_condition else IndependentGaussian()
    path.check_coupling(coupling, "test")
    return path, coupling


def _draw(path, coupling, mixture, n, seed):
    """One float64 batch of the path under the data's own coupling."""
    g = torch.Generator().manual_seed(seed)
    x0, _ = mixture.sample(n, g)
    if path.x1_is_condition:
        m, s = coupling.linear_map(2)
        x1 = x0 @ m.T + s * torch.randn(n, 2, dtype=torch.float64, generator=g)
    else:
        x1 = torch.randn(n, 2, dtype=torch.float64, generator=g)
    t = path.sample_t(n, g).double()
    z = torch.randn(n, 2, dtype=torch.float64, generator=g) if path.needs_extra_noise else None
    return path.interpolate(x0, x1, t, z, cond=x1 if path.x1_is_condition else None)


def _teacher(path, coupling, mixture, parameterization):
    return AnalyticTeacher(mixture).attach(RunContext(path, parameterization, mixture, coupling))


PERTURBATIONS = {
    # constant: pointing at the mode the wrong mixture (below) over-weights, so the calibration can see it
    "constant": lambda x, t: torch.tensor([-0.3, -0.1], dtype=torch.float64).expand_as(x),
    "nonlinear": lambda x, t: 0.2 * torch.sin(x.flip(-1)) * torch.exp(-t[:, None] ** 2),
}


def _identity_gap(f, d, target, w):
    """(L(f + d) - L(f) - E w ||d||^2, its standard error): zero within noise iff f minimises the loss."""
    excess = w * (((f + d - target) ** 2).sum(-1) - ((f - target) ** 2).sum(-1)) - w * (d**2).sum(-1)
    return float(excess.mean()), float(excess.std()) / math.sqrt(len(excess))


@pytest.mark.parametrize("name", PATHS)
def test_exact_field_minimises_the_matching_loss_in_every_parameterisation(name):
    """L(f* + d) - L(f*) = E w ||d||^2 (float64, Monte Carlo within 4 standard errors) for every
    parameterisation, with the path's own weight in that parameterisation; a wrong mixture's field fails."""
    n = 60_000
    truth = GaussianMixture(MEANS, 0.5)
    wrong = GaussianMixture(MEANS, 0.5, weights=[6.0, 1.0, 1.0])
    path, coupling = _path_and_coupling(name)
    s = _draw(path, coupling, truth, n, seed=0)
    cond = s.x1 if path.x1_is_condition else None
    x0_true = _teacher(path, coupling, truth, "x0")(s.x_t, s.t, cond)
    x0_wrong = _teacher(path, coupling, wrong, "x0")(s.x_t, s.t, cond)
    for p in path.parameterizations:
        w = path.weight(s.t, p)
        assert torch.isfinite(w).all() and bool((w > 0).all()), (name, p)
        target = path.target(s, p)
        f_true = path.from_x0(x0_true, p, s.x_t, s.t, s.x1)
        f_wrong = path.from_x0(x0_wrong, p, s.x_t, s.t, s.x1)
        for pname, perturb in PERTURBATIONS.items():
            gap, stderr = _identity_gap(f_true, perturb(s.x_t, s.t), target, w)
            assert abs(gap) < 4 * stderr + 1e-12, (name, p, pname, gap, stderr)
        # calibration: the field of another mixture fails the same check (moved towards the truth, its loss
        # falls instead of rising by E w ||d||^2)
        gap, stderr = _identity_gap(f_wrong, f_true - f_wrong, target, w)
        assert abs(gap) > 4 * stderr, (name, p, gap, stderr)


@pytest.mark.parametrize("name", PATHS)
def test_conversions_round_trip_in_float64(name):
    path, coupling = _path_and_coupling(name)
    s = _draw(path, coupling, GaussianMixture(MEANS, 0.5), 2000, seed=1)
    g = torch.Generator().manual_seed(2)
    pred_x0 = s.x0 + torch.randn(s.x0.shape, dtype=torch.float64, generator=g)
    preds = {p: path.from_x0(pred_x0, p, s.x_t, s.t, s.x1) for p in path.parameterizations}
    for p, pred in preds.items():
        back = path.to_x0(pred, p, s.x_t, s.t, s.x1)
        assert torch.allclose(back, pred_x0, rtol=1e-9, atol=1e-9), (name, p, float((back - pred_x0).abs().max()))
        for q in path.parameterizations:
            there = path.convert(pred, p, q, s.x_t, s.t, s.x1)
            scale = 1.0 + preds[q].abs()
            assert bool(((there - preds[q]).abs() <= 1e-9 * scale).all()), (name, p, q)
            again = path.convert(there, q, p, s.x_t, s.t, s.x1)
            assert bool(((again - pred).abs() <= 1e-9 * (1.0 + pred.abs())).all()), (name, p, q)
    # the conditional targets are the conversions of x0 (exactly so when x_t has no z beside a Gaussian x1)
    for p in path.parameterizations:
        if p == "velocity" and path.needs_extra_noise and not path.x1_is_condition:
            continue  # the SI velocity target carries beta' x1 + gamma' z separately; its regression agrees (above)
        assert torch.allclose(path.target(s, p), path.from_x0(s.x0, p, s.x_t, s.t, s.x1), rtol=1e-9, atol=1e-9), p
    # calibration: a wrong conversion is caught at this tolerance
    assert not torch.allclose(path.to_x0(preds[path.parameterizations[-1]] * (1 + 1e-7), path.parameterizations[-1],
                                         s.x_t, s.t, s.x1), pred_x0, rtol=1e-9, atol=1e-9)


def test_every_path_is_listed_with_a_summary():
    from realuid.components import components

    listed = {c.name: c.summary for c in components("path")}
    for name in ("RectifiedFlow", "AffineFlow", "VP", "VE", "EDM", "BrownianBridge", "StochasticInterpolant"):
        assert name in listed and listed[name] != "(no docstring)"
    schedules = {c.name for c in components("schedule")}
    assert {"LinearSchedule", "CosineSchedule", "PolynomialSchedule", "SqrtNoise", "SineSquaredNoise"} <= schedules


def test_logit_normal_time_law_has_its_quantiles_and_stays_in_range():
    """t = sigmoid(m + s n): the empirical quantiles match sigmoid(m + s z_q); clipped into [t_min, t_max]."""
    path = LogitNormalFlow(m=1.5, s=0.7, t_min=0.01, t_max=0.99)
    t = path.sample_t(200_000, torch.Generator().manual_seed(0)).double()
    assert float(t.min()) >= 0.01 - 1e-7 and float(t.max()) <= 0.99 + 1e-7   # (float32 times)
    normal = torch.distributions.Normal(0.0, 1.0)
    for q in (0.1, 0.5, 0.9):
        expected = torch.sigmoid(torch.tensor(1.5 + 0.7 * float(normal.icdf(torch.tensor(q)))))
        assert abs(float(t.quantile(q)) - float(expected)) < 3e-3, q
    uniform = RectifiedFlow().sample_t(200_000, torch.Generator().manual_seed(0))
    assert abs(float(uniform.median()) - float(t.median())) > 0.2   # calibration: another law is far off
    with pytest.raises(Exception, match="LogitNormalFlow.s"):
        LogitNormalFlow(s=0.0)
