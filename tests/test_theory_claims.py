"""Facts that tools/real_data_theory.py prints about RealUID's ideal generators at an exact fake model.

Coarser integrals than the tool (16 times, 1024 points); the bounds leave a margin around the values
measured at both resolutions (seeds 0-2), and each comes with a calibration that shows it could fail.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from realuid.data.gmm import GaussianMixture
from realuid.theory import ideal_weights

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import real_data_theory as rdt  # noqa: E402

KW = dict(times=16, points=1024, seed=0)
F64 = torch.float64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_missing_mode_weights_barely_move_near_one_but_do_far_from_it():
    """Teacher (0.5, 0.5, 1e-6), data thirds: UID gives the teacher; near 1 the third mode stays < 0.03
    (measured 0.000-0.019); (0.5, 0.3) gives it 0.12-0.13."""
    data, teacher = GaussianMixture(rdt.MEANS, rdt.STD), rdt.teachers()["a"]
    uid = ideal_weights(data, teacher, 1.0, 1.0, **KW)
    assert rdt.error(uid, teacher.weights) <= 1e-3, uid
    far = ideal_weights(data, teacher, 0.5, 0.3, **KW)
    assert rdt.error(far, teacher.weights) > 0.06, far  # calibration: the 1e-3 check above can fail
    assert far[2] > 0.08, far
    for alpha, beta in ((0.98, 0.9604), (0.96, 0.9984), (0.92, 0.94), (0.86, 0.8256)):
        w = ideal_weights(data, teacher, alpha, beta, **KW)
        assert w[2] < 0.03, (alpha, beta, w)
    assert far[2] > 0.03  # calibration: the far setting fails the near-1 bound


def test_beta_equal_alpha_moves_away_from_the_data():
    """Teacher (2, 1, 1) / 4: beta = alpha = 0.5 gives w_3 = 1/6 (closed form), farther from the data's 1/3
    than the teacher's 0.25; beta = 0.3 moves it towards the data (0.297)."""
    data, teacher = GaussianMixture(rdt.MEANS, rdt.STD), rdt.teachers()["b"]
    same = ideal_weights(data, teacher, 0.5, 0.5, **KW)
    assert abs(same[2] - 1 / 6) < 2e-3, same
    assert abs(same[2] - 1 / 3) > abs(0.25 - 1 / 3) + 0.05, same
    lower = ideal_weights(data, teacher, 0.5, 0.3, **KW)
    assert abs(lower[2] - 1 / 3) < abs(0.25 - 1 / 3) - 0.02, lower  # calibration: the other direction


def test_moved_mode_position():
    """Teacher's third mode moved by (1.5, 0): UID keeps it (s = 1), beta = alpha = 0.92 pushes it
    further (1.065), (0.96, 0.9984) brings it a third of the way back (0.66-0.67), (0.5, 0.3) to the data (0.03)."""
    shift = [1.5, 0.0]
    moved = [list(m) for m in rdt.MEANS]
    moved[2] = [rdt.MEANS[2][0] + shift[0], rdt.MEANS[2][1]]
    third = [1 / 3] * 3
    obj = rdt.Objective(rdt.MEANS, third, moved, third, **KW)
    assert obj(moved, third, 1.0, 1.0) < 1e-12  # J vanishes at the teacher ...
    assert obj(rdt.MEANS, third, 1.0, 1.0) > 1e-3  # ... and only there (calibration)
    s = {ab: rdt.moved_mode(obj, shift, *ab)["s_argmin"] for ab in ((1.0, 1.0), (0.92, 0.92), (0.96, 0.9984),
                                                                     (0.5, 0.3))}
    assert abs(s[1.0, 1.0] - 1) < 0.02, s
    assert s[0.92, 0.92] > 1.03, s
    assert 0.5 < s[0.96, 0.9984] < 0.85, s
    assert s[0.5, 0.3] < 0.1, s
