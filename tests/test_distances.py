"""Distances: the expanded general form (gamma != alpha) against the regression form; their parameter rules."""

from __future__ import annotations

import pytest
import torch

from realuid.distances import Coefficients, NormalizedL2, SquaredL2
from realuid.errors import UserError
from realuid.objectives import RealUID

F64 = torch.float64


def test_general_form_with_gamma_equal_alpha_is_realuid():
    """SquaredL2's expanded (gamma != alpha) code == its regression form at c_q = c_t; gamma = alpha == RealUID."""
    g = torch.Generator().manual_seed(0)
    f, f_star, f_c = (torch.randn(64, 3, generator=g, dtype=F64) for _ in range(3))
    f.requires_grad_(True)
    d = SquaredL2()
    for c in (Coefficients(0.94, 0.96, 0.94), Coefficients(0.06, 0.04, 0.06), Coefficients(1.0, 1.0, 1.0)):
        # generator Phi: equal values
        assert torch.allclose(d.expanded_generator_loss(f, f_star, f_c, c), d.generator_loss(f, f_star, f_c, c),
                              rtol=1e-12, atol=1e-12)
        # fake loss: equal up to an f-independent term, i.e. equal gradients in f
        ge = torch.autograd.grad(d.expanded_fake_loss(f, f_star, f_c, c).sum(), f)[0]
        gr = torch.autograd.grad(d.fake_loss(f, f_star, f_c, c).sum(), f)[0]
        assert torch.allclose(ge, gr, rtol=1e-12, atol=1e-12)
        diff = d.expanded_fake_loss(f, f_star, f_c, c) - d.fake_loss(f, f_star, f_c, c)
        assert torch.allclose(diff, d.expanded_fake_loss(f.detach() * 0 + 1, f_star, f_c, c)
                              - d.fake_loss(f.detach() * 0 + 1, f_star, f_c, c), rtol=1e-10, atol=1e-10)
    # calibration: with c_q != c_t the two forms differ
    c = Coefficients(0.8, 0.96, 0.94)
    assert not torch.allclose(d.expanded_generator_loss(f, f_star, f_c, c),
                              d.generator_loss(f, f_star, f_c, Coefficients(0.94, 0.96, 0.94)))
    explicit = RealUID(0.94, 0.96, gamma=0.94)
    assert (explicit.on_generated, explicit.on_real) == (RealUID(0.94, 0.96).on_generated, RealUID(0.94, 0.96).on_real)


def test_normalized_distance_refuses_a_non_positive_eps():
    with pytest.raises(UserError) as err:
        NormalizedL2(eps=0.0)
    assert "NormalizedL2.eps" in err.value.message and "Fix:" in err.value.message, err.value.message
