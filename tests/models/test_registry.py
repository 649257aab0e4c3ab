"""The trained-model store: manifests round-trip through their TOML writer, a registered run resolves by name, and a
model whose checkpoint is gone is reported with the command that trains it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import ROOT, needs_shards
from realuid.cli import app
from realuid.errors import UserError
from realuid.models.registry import Manifest, dumps_toml, loads_toml, read_manifest, register_run, resolve_source


def test_toml_writer_round_trips():
    data = {"name": "x", "kind": "teacher", "quote": 'a "b"\n\\c', "n": 3, "f": 0.1, "big": 1e30, "flag": True,
            "list": [1, 2.5, "s"], "metrics": {"fd nfe=1": {"value": 12.5, "command": "realuid eval 'x'"},
                                               "acc": {"value": 0.9}}, "config": {"widths": [8, 16]}}
    assert loads_toml(dumps_toml(data)) == data


@pytest.mark.slow
@needs_shards
def test_registry_manifests_round_trip_and_report_missing_checkpoints(cifar_workdir, cifar_teachers, monkeypatch):
    registry = cifar_workdir / "repo" / "registry"
    monkeypatch.setenv("REALUID_REGISTRY", str(registry))
    manifest = register_run("smoke_teacher", cifar_teachers["fm_cifar_teacher"],
                            metrics={"fd_classifier_nfe2": {"value": 123.4, "command": "realuid eval x"}},
                            folder=registry)
    again = read_manifest(registry / "smoke_teacher.toml")
    assert again.to_dict() == manifest.to_dict() and again.kind == "teacher" and again.step == 2
    assert again.metrics["fd_classifier_nfe2"] == {"value": 123.4, "command": "realuid eval x"}
    assert resolve_source("smoke_teacher", "test").checkpoint == again.checkpoint_path
    result = CliRunner().invoke(app, ["registry", "list", "--verify"])
    assert result.exit_code == 0 and "smoke_teacher" in result.output and "sha256 ok" in result.output

    # the FD classifier tool's manifest form (bare metrics, one command) reads too
    sys.path.insert(0, str(ROOT / "tools"))
    from train_fd_classifier import write_manifest

    write_manifest(registry / "clf.toml", Path("nowhere.pt"), "0" * 64, {"test_accuracy": 0.5}, "python tools/t.py",
                   {"widths": [8]})
    assert read_manifest(registry / "clf.toml").metrics["test_accuracy"] == {"value": 0.5,
                                                                          "command": "python tools/t.py"}

    # a registered model whose checkpoint is gone: the error prints the command that trains it
    gone = Manifest(name="gone", kind="teacher", checkpoint="runs/gone/checkpoints/step_00000002.pt",
                    command="realuid run gin/fm_cifar_teacher.gin --out runs/gone")
    gone.write(registry / "gone.toml")
    with pytest.raises(UserError) as err:
        resolve_source("gone", "CheckpointTeacher.source")
    assert "is missing" in err.value.message
    assert "realuid run gin/fm_cifar_teacher.gin --out runs/gone" in err.value.message
