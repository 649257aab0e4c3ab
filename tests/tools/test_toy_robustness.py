"""tools/toy_robustness.py: a run's record and the seed criterion, and a deadline that keeps what finished."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import ROOT

TOOL = [sys.executable, "tools/toy_robustness.py"]


def test_one_run_is_recorded_with_its_verdict_and_summary(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([*TOOL, "--recipes", "uid_fm", "--seeds", "1", "--steps", "30", "--mixtures", "kite",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert (run["recipe"], run["mixture"], run["seed"], run["steps"]) == ("uid_fm_gmm", "kite", 0, 30)
    assert run["true_weights"] == [0.2, 0.35, 0.45]       # the mixture's bindings reached the data
    expected = (all(w >= 0.5 * t for w, t in zip(run["mode_weights"], run["true_weights"]))
                and run["on_mode"] >= 0.9 and run["mode_weight_error"] <= 0.05)
    assert run["kept"] is expected
    assert result["summary"]["uid_fm_gmm|kite"]["kept"] == int(expected)
    assert result["runs_unfinished"] == 0


def test_a_deadline_before_any_run_ends_exits_with_an_error_and_no_table(tmp_path):
    proc = subprocess.run([*TOOL, "--recipes", "uid_fm", "--seeds", "2", "--mixtures", "default", "--jobs", "2",
                           "--deadline", "2", "--out", str(tmp_path / "r.json")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert "2 of 2 runs unfinished" in proc.stdout and "no run finished" in proc.stdout
    assert not (tmp_path / "r.json").exists()


def test_a_negative_deadline_is_refused(tmp_path):
    proc = subprocess.run([*TOOL, "--recipes", "uid_fm", "--deadline", "-1", "--out", str(tmp_path / "r.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "need --deadline >= 0" in proc.stdout + proc.stderr
    assert not (tmp_path / "r.json").exists()
