"""Couplings: exact minibatch OT, paired degradations for bridges, their errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from realuid.couplings import (ImageDegradation, IndependentGaussian, MinibatchOT, PairedDegradation,
                               linear_sum_assignment)
from realuid.data.base import Batch
from realuid.errors import UserError


def _brute_force(cost: torch.Tensor) -> float:
    """The minimum total cost over all n! permutations."""
    n = cost.shape[0]
    perms = torch.tensor(list(itertools.permutations(range(n))))  # [n!, n]
    return float(cost.double()[torch.arange(n), perms].sum(1).min())


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_assignment_is_optimal_against_brute_force(n):
    g = torch.Generator().manual_seed(n)
    for trial in range(12):
        if trial % 3 == 2:  # integer costs with many ties
            cost = torch.randint(0, 4, (n, n), generator=g).double()
        else:
            cost = torch.cdist(torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)).double() ** 2
        col = linear_sum_assignment(cost)
        assert sorted(col.tolist()) == list(range(n))  # a permutation
        assert abs(float(cost[torch.arange(n), col].sum()) - _brute_force(cost)) < 1e-9


def test_assignment_check_can_fail():
    """Calibration: the identity pairing of a random cost matrix is generally not optimal."""
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(6, 6, generator=g, dtype=torch.float64)
    assert float(cost.diagonal().sum()) > _brute_force(cost) + 1e-6


def test_assignment_handles_a_batch_and_bad_input():
    g = torch.Generator().manual_seed(0)
    cost = torch.cdist(torch.randn(256, 3, generator=g), torch.randn(256, 3, generator=g)) ** 2
    col = linear_sum_assignment(cost)
    assert sorted(col.tolist()) == list(range(256))
    best = float(cost[torch.arange(256), col].sum())
    # no pair swap improves an optimal assignment (2-opt check over all pairs)
    c = cost.double()
    i, j = torch.triu_indices(256, 256, 1)
    swap = c[i, col[j]] + c[j, col[i]] - c[i, col[i]] - c[j, col[j]]
    assert float(swap.min()) > -1e-9
    assert best < float(cost.diagonal().sum())
    with pytest.raises(ValueError):
        linear_sum_assignment(torch.zeros(2, 3))
    with pytest.raises(ValueError):
        linear_sum_assignment(torch.tensor([[0.0, float("nan")], [1.0, 0.0]]))


def test_minibatch_ot_permutes_the_noise_to_the_optimal_pairing():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 2, generator=g) * 3
    coupled = MinibatchOT().sample(Batch(x0, torch.arange(6)), 6, (2,), torch.Generator().manual_seed(5), "cpu")
    fresh = torch.randn(6, 2, generator=torch.Generator().manual_seed(5))  # the noise it drew, unpaired
    assert sorted(map(tuple, coupled.x1.tolist())) == sorted(map(tuple, fresh.tolist()))
    cost = torch.cdist(x0.double(), fresh.double()) ** 2
    paired = float(((x0 - coupled.x1) ** 2).sum())
    assert abs(paired - _brute_force(cost)) < 1e-4
    assert paired < float(((x0 - fresh) ** 2).sum())
    assert torch.equal(coupled.cond, torch.arange(6))
    assert MinibatchOT.needs_data and not MinibatchOT.paired
    with pytest.raises(ValueError):
        MinibatchOT().sample(None, 6, (2,), g, "cpu")


def test_paired_degradation_is_linear_gaussian():
    m = [[0.0, 0.0], [0.5, 1.0]]
    coupling = PairedDegradation(m, noise_std=0.3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(200_000, 2, generator=g, dtype=torch.float64) * 2 + 1
    out = coupling.sample(Batch(x0), len(x0), (2,), torch.Generator().manual_seed(1), "cpu")
    assert out.x1.shape == x0.shape and out.cond is out.x1
    resid = out.x1 - x0 @ torch.tensor(m, dtype=torch.float64).T
    assert float(resid.mean(0).abs().max()) < 0.005
    assert torch.allclose(resid.std(0), torch.full((2,), 0.3, dtype=torch.float64), rtol=0.01)
    assert float((resid[:, 0] * resid[:, 1]).mean().abs()) < 0.002
    # identity by default, noise-free when s = 0
    exact = PairedDegradation(noise_std=0.0).sample(Batch(x0[:5]), 5, (2,), g, "cpu")
    assert torch.equal(exact.x1, x0[:5])
    assert PairedDegradation.paired and PairedDegradation.needs_data and not IndependentGaussian.paired


@pytest.mark.parametrize("make, words", [
    (lambda: PairedDegradation([[1.0, 0.0]]), "square"),
    (lambda: PairedDegradation("eye"), "PairedDegradation.matrix"),
    (lambda: PairedDegradation(noise_std=-1.0), "PairedDegradation.noise_std"),
    (lambda: PairedDegradation([[1.0]] ).linear_map(2), "data has dimension 2"),
    (lambda: ImageDegradation(kind="jpeg"), "ImageDegradation.kind"),
    (lambda: ImageDegradation(factor=1), "ImageDegradation.factor"),
    (lambda: ImageDegradation(mask_ratio=1.0), "ImageDegradation.mask_ratio"),
    (lambda: ImageDegradation(kind="downsample", factor=3).degrade(torch.zeros(1, 3, 8, 8), None), "does not divide"),
    (lambda: ImageDegradation(kind="grey").degrade(torch.zeros(1, 1, 8, 8), None), "3 colour channels"),
    (lambda: ImageDegradation().degrade(torch.zeros(4, 2), None), "images"),
    (lambda: PairedDegradation().degrade(torch.zeros(1, 3, 4, 4), None), "vector data"),
])
def test_bad_coupling_inputs_name_the_component_and_the_fix(make, words):
    with pytest.raises(UserError) as err:
        make()
    assert words in err.value.message and "Fix:" in err.value.message


def _images(n=4, c=3, h=8, w=8, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_downsample_upsample_keeps_block_means():
    x = _images()
    y = ImageDegradation("downsample", factor=4).degrade(x, None)
    assert y.shape == x.shape
    blocks = y.unfold(2, 4, 4).unfold(3, 4, 4)  # [n, c, 2, 2, 4, 4]
    assert torch.allclose(blocks, blocks[..., :1, :1].expand_as(blocks))  # constant on each block
    assert torch.allclose(blocks.mean((-1, -2)), x.unfold(2, 4, 4).unfold(3, 4, 4).mean((-1, -2)))


def test_blur_is_a_normalised_gaussian():
    d = ImageDegradation("blur", blur_sigma=1.0)
    k = d.blur_kernel()
    assert len(k) == 7 and abs(float(k.sum()) - 1) < 1e-12 and float(k[3]) == float(k.max())
    flat = torch.full((1, 3, 16, 16), 0.7, dtype=torch.float64)
    assert torch.allclose(d.degrade(flat, None), flat)  # constants pass unchanged
    delta = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    delta[0, 0, 8, 8] = 1.0
    assert torch.allclose(d.degrade(delta, None)[0, 0, 5:12, 5:12], torch.outer(k, k))  # impulse response
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2
    checker = checker.double().expand(1, 3, 16, 16)
    assert float(d.degrade(checker, None).var()) < 0.05 * float(checker.var())


def test_inpainting_masks_the_asked_share_of_pixels_on_all_channels():
    x = _images(n=64, h=16, w=16) + 1.0  # no pixel is 0 before masking
    y = ImageDegradation("inpaint", mask_ratio=0.3).degrade(x, torch.Generator().manual_seed(0))
    masked = y == 0.0
    assert torch.equal(masked[:, :1].expand_as(masked), masked)  # the same mask on every channel
    assert abs(float(masked.double().mean()) - 0.3) < 0.02
    assert torch.equal(y[~masked], x[~masked])


def test_grey_is_bt601_luma_on_three_channels():
    x = _images()
    y = ImageDegradation("grey").degrade(x, None)
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for c in range(3):
        assert torch.allclose(y[:, c], luma)
    noisy = ImageDegradation("grey", noise_std=0.1).sample(Batch(_images(n=256, h=16, w=16)), 256, (3, 16, 16),
                                                         torch.Generator().manual_seed(0), "cpu")
    clean = ImageDegradation("grey").degrade(_images(n=256, h=16, w=16), None)
    assert abs(float((noisy.x1 - clean).std()) - 0.1) < 0.002 and noisy.cond is noisy.x1
