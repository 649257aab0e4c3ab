"""Both image metrics are registered, and attach only to a run whose data are 32x32 RGB images."""

from __future__ import annotations

import pytest

from realuid.context import RunContext
from realuid.errors import UserError
from realuid.metrics.classifier_fd import ClassifierFD
from realuid.metrics.fidelity import INCEPTION_WEIGHTS_NAME, TorchFidelityFID
from realuid.paths import RectifiedFlow


def test_metrics_registered():
    from realuid.components import get

    for name in ("ClassifierFD", "TorchFidelityFID"):
        assert get(name).kind == "metric"


def test_image_metrics_attach_only_to_cifar_shaped_data(tmp_path, classifier_checkpoint, no_network):
    from types import SimpleNamespace

    def context(data):
        return RunContext(RectifiedFlow(), "velocity", data)

    weights = tmp_path / INCEPTION_WEIGHTS_NAME
    weights.write_bytes(b"")                      # construction only checks that the file exists
    for metric in (ClassifierFD(str(classifier_checkpoint), device="cpu"),
                   TorchFidelityFID(inception_weights=str(weights))):
        with pytest.raises(UserError, match="32x32 RGB"):
            metric.attach(context(SimpleNamespace(shape=(2,))))
        assert metric.attach(context(SimpleNamespace(shape=(3, 32, 32), root="/data/cifar"))) is metric
        assert metric.root == "/data/cifar"       # the reference comes from the run's own shard folder
