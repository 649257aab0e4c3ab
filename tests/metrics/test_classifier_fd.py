"""The classifier FD metric: zero on its own reference, ordered on real vs noise images, its reference cache, and
its input checks."""

from __future__ import annotations

import pytest
import torch

from helpers import SHARDS, needs_shards, tiny_classifier
from realuid.errors import UserError
from realuid.metrics.classifier import CIFARClassifier, save_classifier
from realuid.metrics.classifier_fd import ClassifierFD, feature_statistics


def test_classifier_fd_missing_checkpoint_names_the_training_command(tmp_path):
    with pytest.raises(UserError) as err:
        ClassifierFD(classifier_path=str(tmp_path / "absent.pt"))
    assert "python tools/train_fd_classifier.py --out registry/checkpoints/fd_classifier.pt" in str(err.value)


@needs_shards
def test_classifier_fd_on_real_images(tmp_path, classifier_checkpoint):
    from realuid.data.cifar import read_cifar10

    cache = tmp_path / "reference.pt"
    metric = ClassifierFD(str(classifier_checkpoint), reference_split="test", reference_cache=str(cache),
                          root=str(SHARDS), reference_limit=300, device="cpu", pr_reference_size=300)
    images, _ = read_cifar10(SHARDS, "test", limit=300, num_workers=0)

    same = metric(images.float() / 127.5 - 1)                   # the reference images themselves
    assert set(same) == {"fd_classifier", "precision_classifier", "recall_classifier"}
    assert same["fd_classifier"] < 1e-6
    assert same["precision_classifier"] == 1.0 and same["recall_classifier"] == 1.0
    assert metric(images.permute(0, 2, 3, 1))["fd_classifier"] < 1e-6   # uint8 NHWC input, same answer

    noise = metric(torch.rand(300, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    other, _ = read_cifar10(SHARDS, "train", limit=300, num_workers=0)
    real = metric(other.float() / 127.5 - 1)
    assert 0 < real["fd_classifier"] < noise["fd_classifier"]
    assert noise["precision_classifier"] < real["precision_classifier"]

    # the cache is written once and reused by a new metric with the same classifier
    assert cache.is_file()
    stamp = cache.stat().st_mtime_ns
    again = ClassifierFD(str(classifier_checkpoint), reference_split="test", reference_cache=str(cache),
                         root=str(SHARDS), reference_limit=300, device="cpu", pr_reference_size=300)
    assert again(images)["fd_classifier"] < 1e-6 and cache.stat().st_mtime_ns == stamp
    # a different classifier invalidates it
    save_classifier(CIFARClassifier(widths=(8, 16, 32)), classifier_checkpoint)
    ClassifierFD(str(classifier_checkpoint), reference_split="test", reference_cache=str(cache), root=str(SHARDS),
                 reference_limit=300, device="cpu").reference()
    assert cache.stat().st_mtime_ns != stamp


@needs_shards
def test_classifier_fd_npz_cache_and_shape_check(tmp_path, classifier_checkpoint):
    cache = tmp_path / "reference.npz"
    metric = ClassifierFD(str(classifier_checkpoint), reference_split="test", reference_cache=str(cache),
                          root=str(SHARDS), reference_limit=100, device="cpu", precision_recall=False)
    first = metric.reference()
    assert cache.is_file()
    metric._reference = None
    second = metric.reference()
    assert torch.equal(first["mu"], second["mu"]) and second["split"] == "test"
    with pytest.raises(UserError, match="32x32 RGB"):
        metric(torch.zeros(4, 3, 16, 16))
    with pytest.raises(UserError, match="at least 2 samples"):
        metric(torch.zeros(1, 3, 32, 32))


def test_feature_statistics_dimensions():
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    mu, sigma = feature_statistics(images, tiny_classifier(), batch_size=16)
    assert mu.shape == (32,) and sigma.shape == (32, 32) and mu.dtype == torch.float64
    assert torch.allclose(sigma, sigma.T)
