"""Matching paths, one file per family; :mod:`realuid.paths.base` holds the interface."""

from realuid.paths.base import (PARAMETERIZATIONS, AffinePath, MatchingPath, PathSample, PathCoefficients,
                                expand_like)
from realuid.paths.flow import RectifiedFlow
from realuid.paths.logit_normal import LogitNormalFlow
from realuid.paths.affine import (AffineFlow, CosineSchedule, FlowSchedule, LinearSchedule,
                                  PolynomialSchedule)
from realuid.paths.bridge import BrownianBridge
from realuid.paths.diffusion import EDM, VE, VP, DiffusionPath
from realuid.paths.interpolant import (NoiseSchedule, SineSquaredNoise, SqrtNoise,
                                       StochasticInterpolant)
from realuid.paths.validation import validate_coefficients, x0_slope

__all__ = ["PARAMETERIZATIONS", "AffinePath", "MatchingPath", "PathSample", "PathCoefficients", "expand_like",
           "RectifiedFlow", "LogitNormalFlow", "AffineFlow", "FlowSchedule", "LinearSchedule", "CosineSchedule",
           "PolynomialSchedule",
           "BrownianBridge", "DiffusionPath", "VP", "VE", "EDM", "StochasticInterpolant", "NoiseSchedule",
           "SqrtNoise", "SineSquaredNoise", "validate_coefficients", "x0_slope"]
