"""The diffusion family: VP's schedule and v-prediction, loss weights stated once and converted, EDM's
preconditioning and noise law."""

from __future__ import annotations

import torch

from realuid.paths import EDM, VE, VP, x0_slope


def test_vp_schedule_and_v_prediction():
    path = VP()
    t = torch.linspace(0.001, 1.0, 101, dtype=torch.float64)
    s = path.coefficients(t)
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
    assert torch.allclose(edm.weight(sigma, "x0"), lam, rtol=1e-12)
    assert torch.allclose(edm.weight(sigma, "epsilon"), lam * sigma**2, rtol=1e-12)  # eps = (x - x0)/sigma
    assert torch.allclose(edm.weight(sigma, "score"), lam * sigma**4, rtol=1e-12)
    assert torch.allclose(edm.x0_weight(sigma), lam)  # the weight as stated: on x0
    t = torch.linspace(0.01, 1.0, 50, dtype=torch.float64)
    assert torch.allclose(VP().weight(t, "epsilon"), torch.ones_like(t), rtol=1e-12)
    assert torch.allclose(VP(weighting="v").weight(t, "v"), torch.ones_like(t), rtol=1e-12)
    assert torch.allclose(VE().weight(t, "epsilon"), torch.ones_like(t), rtol=1e-12)
    assert torch.allclose(VP(weighting="x0").weight(t, "x0"), torch.ones_like(t))
    # the slope k_P of each conversion (pred_P = k_P x0 + ...)
    vp = VP()
    s = vp.coefficients(t)
    assert torch.allclose(x0_slope(vp, t, "epsilon"), -s.a / s.b, rtol=1e-12)
    assert torch.allclose(x0_slope(vp, t, "v"), -1 / s.b, rtol=1e-10)
    # the space is an argument: asking for one leaves the path as it was (paths are immutable)
    x0_before = vp.weight(t, "x0")
    assert torch.allclose(vp.weight(t, "epsilon"), torch.ones_like(t), rtol=1e-12)
    assert torch.equal(vp.weight(t, "x0"), x0_before) and not torch.allclose(x0_before, torch.ones_like(t))


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
