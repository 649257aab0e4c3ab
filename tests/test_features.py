"""Fréchet distance, precision/recall, the FD classifier and the two image metrics."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from realuid.errors import UserError
from realuid.metrics.classifier import TRAIN_COMMAND, CIFARClassifier, load_classifier, save_classifier
from realuid.metrics.classifier_fd import ClassifierFD, feature_statistics
from realuid.metrics.classifier_training import train_classifier
from realuid.metrics.frechet import frechet_distance, gaussian_statistics, precision_recall
from realuid.metrics.fidelity import INCEPTION_WEIGHTS_NAME, TorchFidelityFID
from realuid.pictures import quantize

SHARDS = Path("/work/shared/data/cifar10")
needs_shards = pytest.mark.skipif(not (SHARDS / "test-000000.tar.gz").is_file(), reason="CIFAR-10 shards absent")


def random_covariance(d: int, generator: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=generator, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------------
# Fréchet distance


def test_frechet_distance_diagonal_closed_form():
    """Diagonal covariances: FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.5])
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = (mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum()   # 7.25 + 4 + 1 = 12.25
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected.item(), rel=1e-12)
    assert expected.item() == pytest.approx(12.25)


def test_frechet_distance_full_covariances_against_eigenvalues_of_product():
    """tr((S1^1/2 S2 S1^1/2)^1/2) = sum sqrt(eig(S1 S2)): an independent route through a non-symmetric matrix."""
    g = torch.Generator().manual_seed(0)
    s1, s2 = random_covariance(20, g), random_covariance(20, g)
    mu1, mu2 = torch.randn(20, generator=g, dtype=torch.float64), torch.randn(20, generator=g, dtype=torch.float64)
    cross = torch.linalg.eigvals(s1 @ s2).real.clamp(min=0).sqrt().sum()
    expected = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * cross
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected.item(), rel=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = torch.randn(2000, 32, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.1, 3, 32)
    mu, sigma = gaussian_statistics(features)
    assert frechet_distance(mu, sigma, mu, sigma) < 1e-9
    # and a shifted copy is at exactly the squared shift
    mu2, sigma2 = gaussian_statistics(features + 0.5)
    assert frechet_distance(mu, sigma, mu2, sigma2) == pytest.approx(32 * 0.25, rel=1e-6)


def test_gaussian_statistics_match_numpy_cov():
    import numpy as np

    features = torch.randn(500, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mu, sigma = gaussian_statistics(features)
    assert torch.allclose(sigma, torch.from_numpy(np.cov(features.numpy(), rowvar=False)), atol=1e-12)
    assert torch.allclose(mu, features.mean(0))


def test_precision_recall_extremes():
    g = torch.Generator().manual_seed(3)
    real = torch.randn(400, 8, generator=g)
    assert precision_recall(real, real.clone(), k=3) == (1.0, 1.0)
    far = torch.randn(400, 8, generator=g) + 100.0
    assert precision_recall(real, far, k=3) == (0.0, 0.0)
    # a fake set drawn from half of the real one: every fake point is real, but the real points far on the
    # other side (x_0 < -1, 16% of them) lie outside every fake k-NN ball
    half = real[real[:, 0] > 0]
    precision, recall = precision_recall(real, half, k=3)
    assert precision == 1.0 and 0.5 < recall < 0.9
    far_side = real[real[:, 0] < -1]
    assert precision_recall(half, far_side, k=3)[0] < 0.1


# ---------------------------------------------------------------------------------------------------------------
# The classifier


def tiny_classifier() -> CIFARClassifier:
    torch.manual_seed(0)
    return CIFARClassifier(widths=(8, 16, 32))


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


def test_quantize_layouts():
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    as_uint8 = quantize(x)
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == (4, 3, 32, 32)
    assert torch.equal(quantize(as_uint8.permute(0, 2, 3, 1)), as_uint8)       # NHWC -> NCHW
    assert torch.equal(quantize(torch.full((1, 3, 2, 2), -1.0)), torch.zeros(1, 3, 2, 2, dtype=torch.uint8))
    assert torch.equal(quantize(torch.full((1, 3, 2, 2), 1.0)), torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))


# ---------------------------------------------------------------------------------------------------------------
# The metrics


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    path = tmp_path / "fd_classifier.pt"
    save_classifier(tiny_classifier(), path)
    return path


def test_classifier_fd_missing_checkpoint_names_the_training_command(tmp_path):
    with pytest.raises(UserError) as err:
        ClassifierFD(classifier_path=str(tmp_path / "absent.pt"))
    assert "python tools/train_fd_classifier.py --out registry/checkpoints/fd_classifier.pt" in str(err.value)


@needs_shards
def test_classifier_fd_on_real_images(tmp_path, checkpoint):
    from realuid.data.cifar import read_cifar10

    cache = tmp_path / "reference.pt"
    metric = ClassifierFD(str(checkpoint), reference_split="test", reference_cache=str(cache),
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
    again = ClassifierFD(str(checkpoint), reference_split="test", reference_cache=str(cache), root=str(SHARDS),
                         reference_limit=300, device="cpu", pr_reference_size=300)
    assert again(images)["fd_classifier"] < 1e-6 and cache.stat().st_mtime_ns == stamp
    # a different classifier invalidates it
    save_classifier(CIFARClassifier(widths=(8, 16, 32)), checkpoint)
    ClassifierFD(str(checkpoint), reference_split="test", reference_cache=str(cache), root=str(SHARDS),
                 reference_limit=300, device="cpu").reference()
    assert cache.stat().st_mtime_ns != stamp


@needs_shards
def test_classifier_fd_npz_cache_and_shape_check(tmp_path, checkpoint):
    cache = tmp_path / "reference.npz"
    metric = ClassifierFD(str(checkpoint), reference_split="test", reference_cache=str(cache), root=str(SHARDS),
                          reference_limit=100, device="cpu", precision_recall=False)
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


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the metric tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("REALUID_INCEPTION_WEIGHTS", raising=False)


def test_torch_fidelity_without_weights_explains_how_to_supply_them(no_network):
    with pytest.raises(UserError) as err:
        TorchFidelityFID()
    message = str(err.value)
    assert INCEPTION_WEIGHTS_NAME in message and "--inception-weights PATH" in message


def test_torch_fidelity_with_missing_weights_file(no_network, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        TorchFidelityFID(inception_weights=str(tmp_path / INCEPTION_WEIGHTS_NAME))


def test_metrics_registered():
    from realuid.components import get

    for name in ("ClassifierFD", "TorchFidelityFID"):
        assert get(name).kind == "metric"


def test_image_metrics_bind_only_to_cifar_shaped_data(tmp_path, checkpoint, no_network):
    from types import SimpleNamespace

    weights = tmp_path / INCEPTION_WEIGHTS_NAME
    weights.write_bytes(b"")                      # construction only checks that the file exists
    for metric in (ClassifierFD(str(checkpoint), device="cpu"), TorchFidelityFID(inception_weights=str(weights))):
        with pytest.raises(UserError, match="32x32 RGB"):
            metric.bind(SimpleNamespace(shape=(2,)))
        assert metric.bind(SimpleNamespace(shape=(3, 32, 32), root="/data/cifar")) is metric
        assert metric.root == "/data/cifar"       # the reference comes from the run's own shard folder
