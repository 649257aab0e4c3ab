"""tools/compare_compiled_step.py, the GPU counterpart of tests/engine/test_compiled_step.py, run on CPU.

On CPU in float32 the compiled step follows the eager one to rounding (about 1e-5 of how far each network
moved in two steps): the tool must measure that for the generator, the fake model and the GAN head, and its
--tolerance gate must fail the run (exit 1, JSON still written) when the tolerance is below what it measured.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT

TOY = ["gin/uid_gan_fm_gmm.gin", "--device", "cpu", "--mode", "default", "--steps", "2",
       "-b", "TrainingLoop.batch_size = 64", "-b", "DistillationTrainer.fake_steps = 2", "-b", "MLP.hidden = 32"]


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/compare_compiled_step.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on CPU needs a C compiler (inductor builds C++ kernels)")
def test_compiled_gan_step_follows_eager_and_the_tolerance_gates(tmp_path):
    out = tmp_path / "compare.json"
    proc = run_tool(*TOY, "--tolerance", "1e-12", "--json", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr        # rounding alone is above 1e-12
    report = json.loads(out.read_text())
    rows = {r["network"]: r for r in report["networks"]}
    assert set(rows) == {"generator", "fake", "head"}
    for name, row in rows.items():
        assert row["start_differs"] == 0.0, name                  # same seed: the same initial weights
        assert row["moved"] > 0 and row["compiled_moved"] > 0, name
        assert row["differs"] < 1e-3, (name, row)                 # compiled trains the same numbers
    assert sorted(report["differ"]) == ["fake", "generator", "head"]
    assert len(report["losses"]) == 2
    for step in report["losses"]:
        for key, (eager, compiled) in ((k, v) for k, v in step.items() if k != "step"):
            assert compiled == pytest.approx(eager, rel=1e-3, abs=1e-5), (key, step)
    assert "compiled training differs from eager" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--mode", "fast"], "is not one of"),
    (["--steps", "0"], "is not in 1..1000"),
    (["--tolerance", "0"], "is not above 0"),
])
def test_bad_options_are_refused(args, message):
    proc = run_tool("gin/uid_gan_fm_gmm.gin", "--device", "cpu", *args)
    assert proc.returncode == 2
    assert message in proc.stdout + proc.stderr
