"""Your own network as a teacher: the example of docs/BRING_YOUR_OWN.md, run as written, and NetworkTeacher's checks.

The example's three files are taken from the document (only the training length
is cut), the user's network is trained in plain PyTorch, saved as .safetensors and
distilled with ``realuid run my_uid.gin --import my_net.py``; the teacher inside
that run must equal the user's module with the saved weights exactly.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from realuid.cli import app
from realuid.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "BRING_YOUR_OWN.md"
QUICK = ["TrainingLoop.steps = 10", "TrainingLoop.batch_size = 64", "TrainingLoop.eval_every = 10",
         "TrainingLoop.eval_samples = 256", "TrainingLoop.checkpoint_every = 10", "DistillationTrainer.fake_steps = 2",
         "DistillationTrainer.warmup_steps = 2"]


def doc_file(name: str) -> str:
    """The code block of the document whose first line is ``# <name>``."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", DOC.read_text(), re.S)
    found = [b for b in blocks if b.splitlines()[0].split(":")[0].strip() == f"# {name}"]
    assert len(found) == 1, f"{DOC} has {len(found)} blocks for {name}"
    return found[0]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The example's folder: my_net.py, a trained my_teacher.safetensors, my_uid.gin, and gin/ as in the checkout."""
    folder = tmp_path_factory.mktemp("byo")
    (folder / "my_net.py").write_text(doc_file("my_net.py"))
    training = doc_file("train_my_net.py")
    assert "STEPS = 3000" in training
    (folder / "train_my_net.py").write_text(training.replace("STEPS = 3000", "STEPS = 300"))
    (folder / "my_uid.gin").write_text(doc_file("my_uid.gin"))
    (folder / "gin").symlink_to(ROOT / "gin")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "train_my_net.py"], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert (folder / "my_teacher.safetensors").is_file()
    return folder


def my_net(folder: Path):
    """The user's class, as the run registered it (imported from the example's my_net.py)."""
    from realuid.components import get
    from realuid.config import import_modules

    import_modules([str(folder / "my_net.py")])
    return get("MyNet").cls


def test_the_documented_example_distils_the_users_teacher(example, monkeypatch):
    from safetensors.torch import load_file

    from realuid.engine.runner import build

    monkeypatch.chdir(example)
    result = CliRunner().invoke(app, ["run", "my_uid.gin", "--import", "my_net.py", "--out", "runs/my_uid",
                                      "--no-progress", *[a for b in QUICK for a in ("--bind", b)]])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert (example / "runs" / "my_uid" / "samples.npy").is_file()
    assert "NetworkTeacher.weights = 'my_teacher.safetensors'" in (example / "runs" / "my_uid" / "config.gin").read_text()

    loop, _ = build("my_uid.gin", QUICK, ["my_net.py"], out=example / "runs" / "built", progress=False)
    teacher = loop.trainer.teacher
    own = my_net(example)()
    own.load_state_dict(load_file(str(example / "my_teacher.safetensors")))
    x, t = torch.randn(64, 2), torch.rand(64)
    with torch.no_grad():
        assert torch.equal(teacher(x, t), own(x, t))
    # the plain-PyTorch training made a velocity field of the mixture: at t = 1 it points from noise to the modes
    with torch.no_grad():
        x0 = x - teacher(x, torch.ones(64))               # one Euler step from the noise end
    assert float(x0.norm(dim=1).mean()) > 2.0


def test_weights_from_a_pt_file_and_a_key(example, tmp_path):
    from realuid.teachers.network import NetworkTeacher

    cls = my_net(example)
    trained = cls()
    torch.save({"ema": trained.state_dict(), "step": 3}, tmp_path / "run.pt")
    teacher = NetworkTeacher(cls(), "velocity", str(tmp_path / "run.pt"), key="ema")
    x, t = torch.randn(8, 2), torch.rand(8)
    with torch.no_grad():
        assert torch.equal(teacher.network(x, t), trained(x, t))
    torch.save(trained.state_dict(), tmp_path / "bare.pt")
    assert torch.equal(NetworkTeacher(cls(), "velocity", str(tmp_path / "bare.pt")).network(x, t), trained(x, t))


def test_network_teacher_refuses_missing_wrong_and_unsafe_weights(example, tmp_path):
    from realuid.teachers.network import NetworkTeacher

    cls = my_net(example)
    with pytest.raises(UserError, match="no weights for its MyNet"):
        NetworkTeacher(cls(), "velocity")
    torch.save(cls(hidden=32).state_dict(), tmp_path / "small.pt")
    with pytest.raises(UserError, match=r"first tensor that differs is body.0.weight: \[32, 3\] in the weights, "
                                        r"\[128, 3\] in the network"):
        NetworkTeacher(cls(), "velocity", str(tmp_path / "small.pt"))
    torch.save({"net": cls()}, tmp_path / "pickled.pt")
    with pytest.raises(UserError, match="asks to run my_net.MyNet"):
        NetworkTeacher(cls(), "velocity", str(tmp_path / "pickled.pt"))
    with pytest.raises(UserError, match="does not exist"):
        NetworkTeacher(cls(), "velocity", str(tmp_path / "nothing.safetensors"))
    torch.save({"a": cls().state_dict(), "b": cls().state_dict()}, tmp_path / "two.pt")
    with pytest.raises(UserError, match="bind NetworkTeacher.key to one of 'a', 'b'"):
        NetworkTeacher(cls(), "velocity", str(tmp_path / "two.pt"))
