"""The FD classifier: shapes, it trains, its checkpoint round-trips, and a missing one names the training command."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_classifier
from realuid.errors import UserError
from realuid.metrics.classifier import TRAIN_COMMAND, load_classifier, save_classifier
from realuid.metrics.classifier_training import train_classifier


def test_classifier_shapes():
    net = tiny_classifier()
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    assert net(x).shape == (5, 10) and net.features(x).shape == (5, 32) and net.feature_dim == 32


def test_classifier_trains():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.arange(64) % 10
    # make the task learnable: the class sets the mean brightness of the red channel
    images[:, 0] = (labels * 25)[:, None, None].to(torch.uint8)
    net = tiny_classifier()
    losses = train_classifier(net, images, labels, epochs=30, batch_size=32, lr=0.05)
    assert len(losses) == 60
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3


def test_checkpoint_round_trip_and_missing_file(tmp_path):
    net = tiny_classifier()
    sha = save_classifier(net, tmp_path / "c.pt", test_accuracy=0.5)
    assert len(sha) == 64 and not list(tmp_path.glob(".*tmp"))
    checkpoint = torch.load(tmp_path / "c.pt", weights_only=True)
    assert checkpoint["config"]["widths"] == [8, 16, 32] and checkpoint["test_accuracy"] == 0.5
    loaded = load_classifier(tmp_path / "c.pt")
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert torch.equal(loaded.features(x), net.eval().features(x))
    with pytest.raises(UserError) as err:
        load_classifier(tmp_path / "missing.pt")
    assert TRAIN_COMMAND in str(err.value)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not an FD classifier checkpoint"):
        load_classifier(tmp_path / "junk.pt")
