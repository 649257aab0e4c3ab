"""`realuid run` and the run folder: what it holds, recipes run from another folder, messages printed verbatim, and
a run folder never overwritten without --overwrite (nor a folder realuid did not write, even with it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import ROOT, cli, rows, tiny_run

RECIPE = "gin/uid_fm_gmm.gin"
CHECKPOINTED = "gin/realuid_fm_gmm.gin"

pytestmark = pytest.mark.usefixtures("one_thread", "from_repository_root")   # tests/conftest.py


def test_recipe_includes_resolve_from_another_folder(tmp_path, monkeypatch):
    """`include 'gin/base/...'` works when realuid runs outside the repository (recipe folder's parent searched)."""
    monkeypatch.chdir(tmp_path)
    code, _, stderr = tiny_run(str(ROOT / RECIPE), Path("run"), steps=2)
    assert code == 0, stderr
    assert (tmp_path / "run" / "samples.npy").is_file()


def test_messages_with_brackets_are_printed_verbatim(tmp_path):
    """Rich markup must not eat '[...]' in a message (e.g. the fix '[[x, y], ...]')."""
    code, _, stderr = cli("run", RECIPE, "--out", str(tmp_path / "out"), "-b", "GaussianMixture.means = 'abc'")
    assert code == 2 and "bind GaussianMixture.means = [[x, y], ...]" in stderr


def test_run_folder_contents(tmp_path):
    out = tmp_path / "run"
    code, _, stderr = tiny_run(RECIPE, out, steps=10, extra=["--seed", "3"])
    assert code == 0, stderr
    names = sorted(p.name for p in out.iterdir() if p.name != "tensorboard")  # tensorboard: when installed
    assert names == ["checkpoints", "config.gin", "metrics.jsonl", "run.json", "samples.npy", "samples.png"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000010.pt", "step_00000010.pt.sha256"]
    assert json.loads((out / "run.json").read_text())["seed"] == 3


def test_existing_run_folder_is_never_overwritten_without_a_flag(tmp_path):
    out = tmp_path / "run"
    assert tiny_run(CHECKPOINTED, out, steps=10)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, stderr = tiny_run(CHECKPOINTED, out, steps=10)
    assert code == 2 and "already exists and is not empty" in stderr and "--overwrite" in stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # --overwrite replaces a run folder ...
    assert tiny_run(CHECKPOINTED, out, steps=20, extra=["--overwrite"])[0] == 0
    assert rows(out)[-1]["step"] == 20
    # ... but never a folder realuid did not write
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    code, _, stderr = tiny_run(CHECKPOINTED, precious, steps=10, extra=["--overwrite"])
    assert code == 2 and "not a realuid run folder" in stderr
    assert (precious / "chapter1.tex").read_text() == "years of work"
