"""Fixtures of the metric tests: a tiny FD classifier checkpoint, and a machine without a network."""

from __future__ import annotations

import socket

import pytest

from helpers import tiny_classifier


@pytest.fixture
def classifier_checkpoint(tmp_path):
    """The path of a saved untrained tiny FD classifier."""
    from realuid.metrics.classifier import save_classifier

    path = tmp_path / "fd_classifier.pt"
    save_classifier(tiny_classifier(), path)
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the metric tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("REALUID_INCEPTION_WEIGHTS", raising=False)
