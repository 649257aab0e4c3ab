"""realuid.theory against closed forms: RealUID's ideal mixture weights at an exact fake model."""

from __future__ import annotations

import torch

from realuid.data.gmm import GaussianMixture
from realuid.theory import ideal_weights

F64 = torch.float64


def test_ideal_weights_match_the_closed_form():
    """The minimiser over mode weights: beta = alpha gives (p^T - (1-alpha) p*) / alpha.

    (alpha = beta = 1 gives the teacher.) Calibration: beta != alpha gives other weights.
    """
    means = [[-4.0, 0.0], [4.0, 0.0], [0.0, 6.928203]]
    data, teacher = GaussianMixture(means, 0.5), GaussianMixture(means, 0.5, weights=[2.0, 1.0, 1.0])
    for alpha in (1.0, 0.9):
        want = (teacher.weights - (1 - alpha) * data.weights) / alpha
        got = torch.tensor(ideal_weights(data, teacher, alpha, alpha, times=16, points=1024), dtype=F64)
        assert torch.allclose(got, want, atol=2e-3), (alpha, got, want)
    other = torch.tensor(ideal_weights(data, teacher, 0.6, 0.3, times=16, points=1024), dtype=F64)
    assert (other - (teacher.weights - 0.4 * data.weights) / 0.6).abs().max() > 0.02, other
