"""Paths refuse what they cannot be: schedules that are not monotone, hit zero where a conversion divides or have a
wrong derivative; unknown parameterisations, weightings, ranges and unpaired couplings, each naming the fix."""

from __future__ import annotations

import math

import pytest
import torch

from realuid.couplings import IndependentGaussian
from realuid.errors import UserError
from realuid.paths import (EDM, VE, VP, AffineFlow, BrownianBridge, CosineSchedule, FlowSchedule,
                           PathCoefficients, PolynomialSchedule, StochasticInterpolant)


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
    wavy = _Schedule(lambda t: PathCoefficients(a=(1 - t) * (1 + 0.5 * torch.sin(4 * math.pi * t)),
                                                da=-(1 + 0.5 * torch.sin(4 * math.pi * t))
                                                + (1 - t) * 2 * math.pi * torch.cos(4 * math.pi * t),
                                                b=t, db=torch.ones_like(t)))
    message = _error(lambda: AffineFlow(wavy))
    assert "AffineFlow" in message and "not monotone" in message


def test_a_schedule_that_hits_zero_where_a_conversion_divides_is_refused():
    crossing = _Schedule(lambda t: PathCoefficients(a=1 - 2 * t, da=-2 * torch.ones_like(t), b=t,
                                                    db=torch.ones_like(t)))
    assert "a_t" in _error(lambda: AffineFlow(crossing))
    assert "VP.t_min" in _error(lambda: VP(t_min=0.0))
    assert "non-finite" in _error(lambda: StochasticInterpolant(t_min=0.0))
    assert "BrownianBridge.t_max" in _error(lambda: BrownianBridge(t_max=1.0))
    noise_free = _Schedule(lambda t: PathCoefficients(a=torch.ones_like(t), da=0 * t, b=0 * t, db=0 * t))
    assert "sigma_t is 0" in _error(lambda: AffineFlow(noise_free))


def test_a_wrong_schedule_derivative_is_refused():
    slipped = _Schedule(lambda t: PathCoefficients(a=1 - t**2, da=-t, b=t**2, db=2 * t))
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
    (lambda: BrownianBridge().check_coupling(IndependentGaussian(), "here"), "needs a paired coupling"),
])
def test_bad_path_inputs_name_the_component_and_the_fix(make, words):
    assert words in _error(make)
