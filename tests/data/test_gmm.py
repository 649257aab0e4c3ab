"""The Gaussian-mixture data source takes its bindings (means, stds, weights) from a recipe."""

from __future__ import annotations

import pytest
import torch

from helpers import build_loop

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def test_gmm_bindings_change_the_data(tmp_path):
    data = build_loop("uid_fm_gmm.gin", tmp_path / "run", "TrainingLoop.steps = 3",
                      "GaussianMixture.means = [[0.0, 0.0], [3.0, 3.0]]", "GaussianMixture.stds = [0.3, 0.6]",
                      "GaussianMixture.weights = [1.0, 3.0]").data
    assert data.means.tolist() == [[0.0, 0.0], [3.0, 3.0]]
    assert torch.allclose(data.weights, torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert torch.allclose(data.covs[1], 0.36 * torch.eye(2, dtype=torch.float64))
