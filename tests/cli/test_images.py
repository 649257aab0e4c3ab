"""`realuid sample` (uint8 .npz and a PNG grid, from a teacher or a student run) and `realuid eval` (no Inception
weights: exit 2 and how to supply them; the classifier FD without them)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import needs_shards
from realuid.cli import app

pytestmark = pytest.mark.slow   # on the CIFAR smoke runs (tests/conftest.py)
pytest.importorskip("timm")


@needs_shards
def test_sample_command_writes_uint8_npz_and_png(cifar_workdir, cifar_teachers, cifar_students):
    runner = CliRunner()
    out = cifar_workdir / "sampled" / "teacher"
    result = runner.invoke(app, ["sample", str(cifar_teachers["fm_cifar_teacher"]), "--nfe", "2", "--num", "6",
                                 "--batch-size", "4", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with np.load(out / "samples.npz") as arrays:
        assert arrays["images"].dtype == np.uint8 and arrays["images"].shape == (6, 32, 32, 3)
    assert (out / "samples.png").is_file() and json.loads((out / "sample.json").read_text())["nfe"] == 2

    out = cifar_workdir / "sampled" / "cond"
    result = runner.invoke(app, ["sample", str(cifar_teachers["fm_cifar_teacher_cond"]), "--nfe", "1", "--solver",
                                 "euler", "--cfg", "2.0", "--num", "12", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with np.load(out / "samples.npz") as arrays:
        assert arrays["labels"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]

    out = cifar_workdir / "sampled" / "student"
    result = runner.invoke(app, ["sample", str(cifar_students["realuid_fm_cifar"]), "--num", "5", "--out", str(out),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with np.load(out / "samples.npz") as arrays:
        assert arrays["images"].shape == (5, 32, 32, 3)
    result = runner.invoke(app, ["sample", str(cifar_teachers["fm_cifar_teacher"]), "--num", "5", "--out", str(out)])
    assert result.exit_code == 2 and "--nfe" in result.output


@needs_shards
def test_eval_without_inception_weights_exits_2_and_says_how(cifar_workdir, cifar_teachers, fd_classifier, monkeypatch):
    monkeypatch.delenv("REALUID_INCEPTION_WEIGHTS", raising=False)
    runner = CliRunner()
    out = cifar_workdir / "sampled" / "for_eval"
    assert runner.invoke(app, ["sample", str(cifar_teachers["fm_cifar_teacher"]), "--nfe", "1", "--num", "8", "--out",
                               str(out), "--device", "cpu"]).exit_code == 0
    result = runner.invoke(app, ["eval", str(out / "samples.npz")])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "--inception-weights" in text and "weights-inception-2015-12-05-6726825d.pth" in text
    result = runner.invoke(app, ["eval", str(out / "samples.npz"), "--no-fid", "--fd-classifier", str(fd_classifier),
                                 "--reference-limit", "64", "--json", str(out / "eval.json")])
    assert result.exit_code == 0, result.output
    assert np.isfinite(json.loads((out / "eval.json").read_text())["metrics"]["fd_classifier"])
