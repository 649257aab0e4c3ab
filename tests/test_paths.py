"""Every matching path (issue 4): exact minimisers, float64 conversions, loss weights, bad-input errors."""

from __future__ import annotations

import math

import pytest
import torch

from realuid.couplings import IndependentGaussian, PairedDegradation
from realuid.data.gmm import GaussianMixture
from realuid.errors import UserError
from realuid.paths import (EDM, VE, VP, AffineFlow, BrownianBridge, CosineSchedule, FlowSchedule,
                           PolynomialSchedule, RectifiedFlow, Schedule, SineSquaredNoise, StochasticInterpolant,
                           x0_slope)
from realuid.teachers.analytic import AnalyticTeacher, bridge_posterior_mean

MEANS = [[-4.0, 0.0], [4.0, 0.0], [0.0, 6.928203]]
BRIDGE_COUPLING = PairedDegradation([[0.0, 0.0], [0.0, 1.0]], noise_std=0.5)

PATHS = {
    "rectified": lambda: RectifiedFlow(),
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


def _bound(name, parameterization):
    path = PATHS[name]()
    coupling = BRIDGE_COUPLING if path.x1_is_condition else IndependentGaussian()
    return path.bind(parameterization, coupling), coupling


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


def _teacher(path, mixture, parameterization):
    return AnalyticTeacher(mixture).bind(path, mixture, parameterization)


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
    path, coupling = _bound(name, "x0")
    s = _draw(path, coupling, truth, n, seed=0)
    cond = s.x1 if path.x1_is_condition else None
    x0_true = _teacher(path, truth, "x0")(s.x_t, s.t, cond)
    x0_wrong = _teacher(path, wrong, "x0")(s.x_t, s.t, cond)
    for p in path.parameterizations:
        path.bind(p, coupling)
        w = path.weight(s.t)
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
    path, coupling = _bound(name, "x0")
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


def test_vp_schedule_and_v_prediction():
    path = VP()
    t = torch.linspace(0.001, 1.0, 101, dtype=torch.float64)
    s = path.schedule(t)
    assert torch.allclose(s.a**2 + s.b**2, torch.ones_like(t), atol=1e-14)
    abar = torch.exp(-(0.1 * t + 0.5 * 19.9 * t**2))
    assert torch.allclose(s.a, abar.sqrt(), rtol=1e-13)
    # v = a eps - b x0 (Salimans & Ho 2022) on the conditional pair
    g = torch.Generator().manual_seed(0)
    x0, x1 = (torch.randn(101, 2, dtype=torch.float64, generator=g) for _ in range(2))
    sample = path.interpolate(x0, x1, t)
    assert torch.allclose(path.target(sample, "v"), s.a[:, None] * x1 - s.b[:, None] * x0, atol=1e-12)


def test_loss_weights_are_stated_once_and_converted():
    """EDM's lambda(sigma) on x0; L_simple = unit weight on epsilon; 'v' = unit weight on v; w_P = w_x0 / k_P^2."""
    sigma = torch.logspace(-2, 1.5, 50, dtype=torch.float64)
    edm = EDM(sigma_data=0.5)
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    assert torch.allclose(edm.weight_in(sigma, "x0"), lam, rtol=1e-12)
    assert torch.allclose(edm.weight_in(sigma, "epsilon"), lam * sigma**2, rtol=1e-12)  # eps = (x - x0)/sigma
    assert torch.allclose(edm.weight_in(sigma, "score"), lam * sigma**4, rtol=1e-12)
    assert torch.allclose(edm.weight(sigma), lam)  # unbound: x0
    t = torch.linspace(0.01, 1.0, 50, dtype=torch.float64)
    assert torch.allclose(VP().weight_in(t, "epsilon"), torch.ones_like(t), rtol=1e-12)
    assert torch.allclose(VP(weighting="v").weight_in(t, "v"), torch.ones_like(t), rtol=1e-12)
    assert torch.allclose(VE().weight_in(t, "epsilon"), torch.ones_like(t), rtol=1e-12)
    assert torch.allclose(VP(weighting="x0").weight_in(t, "x0"), torch.ones_like(t))
    # the slope k_P of each conversion (pred_P = k_P x0 + ...)
    vp = VP()
    s = vp.schedule(t)
    assert torch.allclose(x0_slope(vp, t, "epsilon"), -s.a / s.b, rtol=1e-12)
    assert torch.allclose(x0_slope(vp, t, "v"), -1 / s.b, rtol=1e-10)
    # the trainer's binding selects the space
    vp.bind("epsilon", IndependentGaussian())
    assert torch.allclose(vp.weight(t), torch.ones_like(t), rtol=1e-12)


def test_edm_preconditioning_and_noise_law():
    path = EDM(sigma_data=0.5)
    seen = {}

    def network(x, time, cond):
        seen["x"], seen["time"] = x, time
        return torch.full_like(x, 2.0)

    x = torch.randn(5, 2, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.1, 0.5, 2.0, 80.0], dtype=torch.float64)
    d = path.apply_network(network, x, sigma, None, "x0")
    total = sigma**2 + 0.25
    c_skip, c_out, c_in = 0.25 / total, sigma * 0.5 / total.sqrt(), 1 / total.sqrt()
    assert torch.allclose(d, c_skip[:, None] * x + c_out[:, None] * 2.0, rtol=1e-13)
    assert torch.allclose(seen["x"], c_in[:, None] * x, rtol=1e-13)
    assert torch.allclose(seen["time"], sigma.log() / 4, rtol=1e-13)
    eps = path.apply_network(network, x, sigma, None, "epsilon")
    assert torch.allclose(eps, (x - d) / sigma[:, None], rtol=1e-12)
    ln_sigma = path.sample_t(200_000, torch.Generator().manual_seed(0)).double().log()
    assert abs(float(ln_sigma.mean()) + 1.2) < 0.01 and abs(float(ln_sigma.std()) - 1.2) < 0.01


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


# -- bad input ---------------------------------------------------------------------------------------------
class _Schedule(FlowSchedule):
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, t):
        return self.fn(t)


def _error(fn) -> str:
    with pytest.raises(UserError) as err:
        fn()
    message = err.value.message
    assert "Where:" in message and "Fix:" in message
    return message


def test_a_schedule_that_is_not_monotone_is_refused():
    wavy = _Schedule(lambda t: Schedule(a=(1 - t) * (1 + 0.5 * torch.sin(4 * math.pi * t)),
                                        da=-(1 + 0.5 * torch.sin(4 * math.pi * t))
                                        + (1 - t) * 2 * math.pi * torch.cos(4 * math.pi * t),
                                        b=t, db=torch.ones_like(t)))
    message = _error(lambda: AffineFlow(wavy))
    assert "AffineFlow" in message and "not monotone" in message


def test_a_schedule_that_hits_zero_where_a_conversion_divides_is_refused():
    crossing = _Schedule(lambda t: Schedule(a=1 - 2 * t, da=-2 * torch.ones_like(t), b=t, db=torch.ones_like(t)))
    assert "a_t" in _error(lambda: AffineFlow(crossing))
    assert "VP.t_min" in _error(lambda: VP(t_min=0.0))
    assert "non-finite" in _error(lambda: StochasticInterpolant(t_min=0.0))
    assert "BrownianBridge.t_max" in _error(lambda: BrownianBridge(t_max=1.0))
    noise_free = _Schedule(lambda t: Schedule(a=torch.ones_like(t), da=0 * t, b=0 * t, db=0 * t))
    assert "sigma_t is 0" in _error(lambda: AffineFlow(noise_free))


def test_a_wrong_schedule_derivative_is_refused():
    slipped = _Schedule(lambda t: Schedule(a=1 - t**2, da=-t, b=t**2, db=2 * t))
    message = _error(lambda: AffineFlow(slipped))
    assert "da" in message and "finite difference" in message


@pytest.mark.parametrize("make, words", [
    (lambda: VE().check_parameterization("v", "here"), "VE does not support the parameterisation 'v'"),
    (lambda: BrownianBridge().check_parameterization("v", "here"), "BrownianBridge does not support"),
    (lambda: VE(weighting="v"), "VE.weighting"),
    (lambda: VP(weighting="snr"), "VP.weighting"),
    (lambda: VP(beta_min=1.0, beta_max=0.5), "VP.beta_max"),
    (lambda: VE(sigma_min=0.0), "VE.sigma_min"),
    (lambda: EDM(P_std=0.0), "EDM.P_std"),
    (lambda: BrownianBridge(eps=0.0), "BrownianBridge.eps"),
    (lambda: AffineFlow("cosine"), "AffineFlow.scheduler"),
    (lambda: StochasticInterpolant(noise=CosineSchedule()), "StochasticInterpolant.noise"),
    (lambda: PolynomialSchedule(0.0), "PolynomialSchedule.exponent"),
    (lambda: BrownianBridge().bind("x0", IndependentGaussian()), "needs a paired coupling"),
])
def test_bad_path_inputs_name_the_component_and_the_fix(make, words):
    assert words in _error(make)


def test_every_path_is_listed_with_a_summary():
    from realuid.components import components

    listed = {c.name: c.summary for c in components("path")}
    for name in ("RectifiedFlow", "AffineFlow", "VP", "VE", "EDM", "BrownianBridge", "StochasticInterpolant"):
        assert name in listed and listed[name] != "(no docstring)"
    schedules = {c.name for c in components("schedule")}
    assert {"LinearSchedule", "CosineSchedule", "PolynomialSchedule", "SqrtNoise", "SineSquaredNoise"} <= schedules
