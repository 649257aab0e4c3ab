"""The image stack at smoke scale: every CIFAR recipe end to end, teacher training, samplers, sample/eval/registry.

Teacher runs are made once per module (fixtures) and reused by the student
recipes, the sampling and registry tests. Exact answers come from the
Gaussian-mixture teacher (DESIGN §6): its probability-flow ODE is known, so
the samplers' errors are measured against a fine reference solution.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from realuid.cli import app
from realuid.cli.images import SMOKE_PRESET
from realuid.data.gmm import GaussianMixture
from realuid.checkpoints import checkpoints, load_checkpoint
from realuid.models.registry import Manifest, dumps_toml, loads_toml, read_manifest, register_run, resolve_source
from realuid.engine.teacher_training import MatchingTrainer
from realuid.engine.runner import build, run
from realuid.errors import UserError
from realuid.networks.mlp import MLP
from realuid.paths import EDM, RectifiedFlow
from realuid.sampling import guided, sample_teacher
from realuid.teachers.analytic import AnalyticTeacher

ROOT = Path(__file__).resolve().parent.parent
SHARDS = Path(os.environ.get("REALUID_CIFAR10") or "/work/shared/data/cifar10")
needs_shards = pytest.mark.skipif(not (SHARDS / "train-000000.tar.gz").is_file(), reason="no CIFAR-10 shards")
pytest.importorskip("timm")


# -- samplers on the exact Gaussian-mixture teacher ------------------------------------------------------------------
def mixture_teacher(path):
    data = GaussianMixture(means=[[-3.0, 0.0], [3.0, 0.0]], stds=0.5)
    return data, AnalyticTeacher().bind(path, data, "velocity")


def mode_statistics(x: torch.Tensor) -> tuple[float, float, float]:
    """(weight of the right mode, worst |mean error| of a mode, worst |std - 0.5| of a mode)."""
    right = x[:, 0] > 0
    means, stds = [], []
    for mask, centre in ((right, 3.0), (~right, -3.0)):
        mode = x[mask]
        means.append(max(abs(float(mode[:, 0].mean()) - centre), abs(float(mode[:, 1].mean()))))
        stds.append(float((mode.std(0) - 0.5).abs().max()))
    return float(right.double().mean()), max(means), max(stds)


def test_euler_and_heun_converge_to_the_mixture_and_heun_wins_at_equal_nfe():
    torch.manual_seed(0)
    path = RectifiedFlow(t_min=1e-3, t_max=1.0)
    _, teacher = mixture_teacher(path)
    z = torch.randn(2000, 2, dtype=torch.float64)
    reference = sample_teacher(teacher, "velocity", path, z, nfe=256, solver="heun")   # error ~ 1/64 of NFE 32's
    errors, samples = {}, {}
    for solver in ("euler", "heun"):
        for nfe in (4, 8, 16, 32):
            samples[solver, nfe] = x = sample_teacher(teacher, "velocity", path, z, nfe=nfe, solver=solver)
            errors[solver, nfe] = float((x - reference).norm(dim=1).mean())
    for solver in ("euler", "heun"):
        series = [errors[solver, n] for n in (4, 8, 16, 32)]
        assert all(b < a for a, b in zip(series, series[1:])), (solver, series)
    for nfe in (4, 8, 16, 32):
        assert errors["heun", nfe] < 0.5 * errors["euler", nfe], errors
    assert errors["euler", 32] / errors["euler", 16] > 0.45          # first order: error halves with NFE
    assert errors["heun", 32] / errors["heun", 16] < 0.4             # second order: near a quarter

    weight, mean_error, std_error = mode_statistics(samples["heun", 32])
    assert abs(weight - 0.5) < 0.04 and mean_error < 0.06 and std_error < 0.05
    # one Euler step from t = 1 lands on E[x0] = 0 for every z: far from the mixture, so the check can fail
    weight, mean_error, std_error = mode_statistics(sample_teacher(teacher, "velocity", path, z, nfe=1,
                                                                   solver="euler"))
    assert mean_error > 2.0


def test_heun_on_the_edm_path_with_the_karras_grid():
    torch.manual_seed(1)
    path = EDM(sigma_data=3.0)
    _, teacher = mixture_teacher(path)
    z = torch.randn(2000, 2, dtype=torch.float64)
    weight, mean_error, std_error = mode_statistics(sample_teacher(teacher, "velocity", path, z, nfe=35))
    assert abs(weight - 0.5) < 0.04 and mean_error < 0.06 and std_error < 0.05


def test_classifier_free_guidance_formula():
    def field(x, t, cond=None):
        return torch.full_like(x, 1.0) if cond is None else x + cond[:, None].to(x.dtype)

    x, t, cond = torch.zeros(3, 2), torch.ones(3), torch.tensor([0, 1, 2])
    out = guided(field, 2.5)(x, t, cond)                       # f_u + s (f_c - f_u)
    assert torch.allclose(out, 1.0 + 2.5 * (cond[:, None].float() - 1.0).expand(3, 2))
    assert torch.equal(guided(field, 2.5)(x, t, None), torch.ones(3, 2))
    assert guided(field, 1.0) is field


# -- teacher training ------------------------------------------------------------------------------------------------
def test_matching_trainer_learns_the_exact_mixture_field(tmp_path):
    torch.manual_seed(0)
    data = GaussianMixture(means=[[-2.0, 0.0], [2.0, 0.0]], stds=0.5)
    path = RectifiedFlow(t_min=1e-3)
    (tmp_path / "run").mkdir()
    trainer = MatchingTrainer(data, path, MLP(dim=2, hidden=64), tmp_path / "run", steps=200, batch_size=256,
                              lr=3e-3, ema_decay=0.9, eval_every=200, eval_samples=200, eval_nfe=8,
                              checkpoint_every=200, device="cpu", progress=False, tensorboard=False)
    exact = AnalyticTeacher().bind(path, data, "velocity")
    generator = torch.Generator().manual_seed(5)
    x0, _ = data.sample(2000, generator)
    x0 = x0.float()
    t = path.sample_t(2000, generator)
    x_t = path.interpolate(x0, torch.randn(x0.shape, generator=generator), t).x_t

    def field_error():
        with torch.no_grad():
            return float((trainer.field(x_t, t) - exact(x_t.double(), t.double()).float()).pow(2).sum(1).mean())

    before = field_error()
    trainer.fit()
    after = field_error()
    assert after < 0.15 * before, (before, after)   # measured: 0.06
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 200 and (tmp_path / "run" / "samples.npy").is_file()


# -- the CIFAR recipes at smoke scale ----------------------------------------------------------------------------------
def smoke(tmp: Path) -> list[str]:
    return [f"include '{SMOKE_PRESET}'", f"CIFAR10Shards.cache_dir = '{tmp / 'cache'}'"]


def check_run_folder(out: Path, images: bool = True) -> list[dict]:
    for name in ("config.gin", "run.json", "metrics.jsonl"):
        assert (out / name).is_file(), name
    assert checkpoints(out / "checkpoints"), "no checkpoint"
    assert list((out / "tensorboard").glob("events.*")), "no TensorBoard events"
    if images:
        assert (out / "samples.png").is_file() and list((out / "samples").glob("step_*.png"))
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="module")
def fd_classifier(workdir):
    from realuid.metrics.classifier import CIFARClassifier, save_classifier

    torch.manual_seed(0)
    path = workdir / "fd_classifier.pt"
    save_classifier(CIFARClassifier((8, 16)), path)
    return path


@pytest.fixture(scope="module")
def teachers(workdir, fd_classifier):
    """Smoke runs of the three teacher recipes (the FM one in bf16 with the classifier FD logged)."""
    if not (SHARDS / "train-000000.tar.gz").is_file():
        pytest.skip("no CIFAR-10 shards")
    extra = {"fm_cifar_teacher": ["MatchingTrainer.precision = 'bf16'",
                                  "MatchingTrainer.metrics = [@ClassifierFD()]",
                                  f"ClassifierFD.classifier_path = '{fd_classifier}'",
                                  "ClassifierFD.reference_limit = 64", "ClassifierFD.pr_reference_size = 64"],
             "fm_cifar_teacher_cond": [], "edm_cifar_teacher": []}
    runs = {}
    for name, binds in extra.items():
        out = workdir / "runs" / name
        run(ROOT / "gin" / f"{name}.gin", smoke(workdir) + binds, out=out, progress=False)
        runs[name] = out
    return runs


@needs_shards
def test_teacher_recipes_write_the_run_folder(teachers):
    rows = check_run_folder(teachers["fm_cifar_teacher"])
    assert rows[-1]["step"] == 2 and np.isfinite(rows[-1]["loss"])
    assert np.isfinite(rows[-1]["fd_classifier"]) and 0 <= rows[-1]["precision_classifier"] <= 1
    state = load_checkpoint(checkpoints(teachers["fm_cifar_teacher"] / "checkpoints")[-1])
    assert state["meta"]["kind"] == "teacher" and state["meta"]["parameterization"] == "velocity"
    assert state["meta"]["shape"] == [3, 32, 32] and "MatchingTrainer.network" in state["meta"]["config"]
    for name in ("fm_cifar_teacher_cond", "edm_cifar_teacher"):
        check_run_folder(teachers[name])
    assert load_checkpoint(checkpoints(teachers["edm_cifar_teacher"] / "checkpoints")[-1])["meta"]["path"] == "EDM"


STUDENTS = {  # recipe: (teacher run, extra bindings)
    "uid_fm_cifar": ("fm_cifar_teacher", []),
    "realuid_fm_cifar": ("fm_cifar_teacher", []),
    "uid_fm_cifar_cond": ("fm_cifar_teacher_cond", []),
    "realuid_fm_cifar_cond": ("fm_cifar_teacher_cond", []),
    "sid_as_uid": ("edm_cifar_teacher", []),
}


@pytest.fixture(scope="module")
def students(workdir, teachers):
    runs = {}
    for name, (teacher, binds) in STUDENTS.items():
        out = workdir / "runs" / name
        run(ROOT / "gin" / f"{name}.gin", smoke(workdir) + [f"CheckpointTeacher.source = '{teachers[teacher]}'"]
            + binds, out=out, progress=False)
        runs[name] = out
    for name, first in (("realuid_ft_fm_cifar", "realuid_fm_cifar"),
                        ("realuid_ft_fm_cifar_cond", "realuid_fm_cifar_cond")):
        teacher = STUDENTS[first][0]
        out = workdir / "runs" / name
        run(ROOT / "gin" / f"{name}.gin", smoke(workdir) + [f"CheckpointTeacher.source = '{teachers[teacher]}'",
                                                            f"FIRST_STAGE = '{runs[first]}'"], out=out, progress=False)
        runs[name] = out
    return runs


@needs_shards
def test_student_recipes_write_the_run_folder(students):
    for name, out in students.items():
        rows = check_run_folder(out)
        assert rows[-1]["step"] == 2 and np.isfinite(rows[-1]["generator_loss"]), name
        assert "uid_gap" in rows[-1], name
        if name.startswith("realuid"):
            assert "fake_loss_real" in rows[-1], name
    assert "SiD" in (students["sid_as_uid"] / "config.gin").read_text()


def test_every_cifar_recipe_is_covered():
    recipes = {p.stem for p in (ROOT / "gin").glob("*cifar*.gin")} | {"sid_as_uid"}
    covered = set(STUDENTS) | {"realuid_ft_fm_cifar", "realuid_ft_fm_cifar_cond", "fm_cifar_teacher",
                               "fm_cifar_teacher_cond", "edm_cifar_teacher", "fm_cifar_teacher_dit"}
    assert recipes <= covered, recipes - covered


@needs_shards
def test_dit_teacher_recipe_through_the_cli_smoke_flag(workdir, teachers):
    out = workdir / "runs" / "dit"
    result = CliRunner().invoke(app, ["run", str(ROOT / "gin" / "fm_cifar_teacher_dit.gin"), "--smoke", "--out",
                                      str(out), "--no-progress", "-b",
                                      f"CIFAR10Shards.cache_dir = '{workdir / 'cache'}'"])
    assert result.exit_code == 0, result.output
    check_run_folder(out)
    assert "DiT.depth = 2" in (out / "config.gin").read_text()     # the smoke preset was applied


@needs_shards
def test_teacher_training_reduces_the_matching_loss_on_a_cifar_subset(workdir):
    trainer, _ = build(ROOT / "gin" / "fm_cifar_teacher.gin",
                       smoke(workdir) + ["CIFAR10Shards.limit = 32", "CIFAR10Shards.hflip = False",
                                         "MatchingTrainer.lr = 2e-3", "MatchingTrainer.steps = 20"],
                       out=workdir / "runs" / "reduce", progress=False)

    def fixed_batch_loss():
        trainer.data.seed(123)
        trainer.rng.manual_seed(456)
        trainer.network.eval()
        with torch.no_grad():
            return float(trainer.loss())

    before = fixed_batch_loss()
    for _ in range(20):
        trainer.train_step()
    after = fixed_batch_loss()
    assert after < 0.8 * before, (before, after)   # measured: 3617 -> 2054


@needs_shards
def test_checkpoint_teacher_warm_starts_the_generator(workdir, teachers):
    trainer, _ = build(ROOT / "gin" / "realuid_fm_cifar.gin",
                       smoke(workdir) + [f"CheckpointTeacher.source = '{teachers['fm_cifar_teacher']}'"],
                       out=workdir / "runs" / "warm", progress=False)
    teacher_weights = trainer.teacher.network.state_dict()
    for name, value in trainer.generator.network.state_dict().items():
        assert torch.equal(value, teacher_weights[name]), name
    ema = load_checkpoint(checkpoints(teachers["fm_cifar_teacher"] / "checkpoints")[-1])["ema"]
    assert torch.equal(teacher_weights["stem.weight"], ema["model.stem.weight"])   # the EMA weights, not the raw
    z = torch.randn(4, 3, 32, 32)
    with torch.no_grad():   # G(z) = z - v*(z, 1): one Euler step of the teacher
        assert torch.allclose(trainer.generator(z), z - trainer.teacher(z, torch.ones(4)), atol=1e-5)


@needs_shards
def test_missing_teacher_prints_the_command_that_trains_it(workdir):
    with pytest.raises(UserError) as err:
        build(ROOT / "gin" / "realuid_fm_cifar.gin", smoke(workdir) + ["CheckpointTeacher.source = 'no_such_teacher'"],
              out=workdir / "runs" / "missing", progress=False)
    assert "realuid run gin/fm_cifar_teacher.gin --smoke --out runs/smoke/no_such_teacher" in err.value.message


# -- sample / eval / registry --------------------------------------------------------------------------------------------
@needs_shards
def test_sample_command_writes_uint8_npz_and_png(workdir, teachers, students):
    runner = CliRunner()
    out = workdir / "sampled" / "teacher"
    result = runner.invoke(app, ["sample", str(teachers["fm_cifar_teacher"]), "--nfe", "2", "--num", "6",
                                 "--batch-size", "4", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with np.load(out / "samples.npz") as arrays:
        assert arrays["images"].dtype == np.uint8 and arrays["images"].shape == (6, 32, 32, 3)
    assert (out / "samples.png").is_file() and json.loads((out / "sample.json").read_text())["nfe"] == 2

    out = workdir / "sampled" / "cond"
    result = runner.invoke(app, ["sample", str(teachers["fm_cifar_teacher_cond"]), "--nfe", "1", "--solver", "euler",
                                 "--cfg", "2.0", "--num", "12", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with np.load(out / "samples.npz") as arrays:
        assert arrays["labels"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]

    out = workdir / "sampled" / "student"
    result = runner.invoke(app, ["sample", str(students["realuid_fm_cifar"]), "--num", "5", "--out", str(out),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with np.load(out / "samples.npz") as arrays:
        assert arrays["images"].shape == (5, 32, 32, 3)
    result = runner.invoke(app, ["sample", str(teachers["fm_cifar_teacher"]), "--num", "5", "--out", str(out)])
    assert result.exit_code == 2 and "--nfe" in result.output


@needs_shards
def test_eval_without_inception_weights_exits_2_and_says_how(workdir, teachers, fd_classifier, monkeypatch):
    monkeypatch.delenv("REALUID_INCEPTION_WEIGHTS", raising=False)
    runner = CliRunner()
    out = workdir / "sampled" / "for_eval"
    assert runner.invoke(app, ["sample", str(teachers["fm_cifar_teacher"]), "--nfe", "1", "--num", "8", "--out",
                               str(out), "--device", "cpu"]).exit_code == 0
    result = runner.invoke(app, ["eval", str(out / "samples.npz")])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "--inception-weights" in text and "weights-inception-2015-12-05-6726825d.pth" in text
    result = runner.invoke(app, ["eval", str(out / "samples.npz"), "--no-fid", "--fd-classifier", str(fd_classifier),
                                 "--reference-limit", "64", "--json", str(out / "eval.json")])
    assert result.exit_code == 0, result.output
    assert np.isfinite(json.loads((out / "eval.json").read_text())["metrics"]["fd_classifier"])


def test_toml_writer_round_trips():
    data = {"name": "x", "kind": "teacher", "quote": 'a "b"\n\\c', "n": 3, "f": 0.1, "big": 1e30, "flag": True,
            "list": [1, 2.5, "s"], "metrics": {"fd nfe=1": {"value": 12.5, "command": "realuid eval 'x'"},
                                               "acc": {"value": 0.9}}, "config": {"widths": [8, 16]}}
    assert loads_toml(dumps_toml(data)) == data


@needs_shards
def test_registry_manifests_round_trip_and_report_missing_checkpoints(workdir, teachers, monkeypatch):
    registry = workdir / "repo" / "registry"
    monkeypatch.setenv("REALUID_REGISTRY", str(registry))
    manifest = register_run("smoke_teacher", teachers["fm_cifar_teacher"],
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


# -- data parallelism ------------------------------------------------------------------------------------------------
def test_two_process_data_parallel_run_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "realuid",
               "run", str(ROOT / "gin" / "uid_fm_gmm.gin"), "--out", str(out), "--no-progress",
               "-b", "DistillationTrainer.steps = 4", "-b", "DistillationTrainer.batch_size = 64",
               "-b", "DistillationTrainer.eval_every = 2", "-b", "DistillationTrainer.eval_samples = 200",
               "-b", "DistillationTrainer.checkpoint_every = 2"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas differ" not in result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]                     # rank 0 alone writes
    state = load_checkpoint(checkpoints(out / "checkpoints")[-1])
    assert state["meta"]["world_size"] == 2 and len(state["ranks"]) == 2
    assert not torch.equal(state["ranks"][0]["rng"], state["ranks"][1]["rng"])   # per-rank noise streams


# -- the shared loop: exact resume of teacher training, the time limit --------------------------------------------------
def gmm_teacher_run(out: Path, steps: int, extra: tuple[str, ...] = (), resume: bool = False):
    binds = ["experiment.trainer = @MatchingTrainer", "MatchingTrainer.data = @GaussianMixture()",
             "MatchingTrainer.path = @RectifiedFlow()", "MatchingTrainer.network = @MLP()", "MLP.dim = 2",
             "MatchingTrainer.batch_size = 64", "MatchingTrainer.eval_every = 3", "MatchingTrainer.eval_samples = 64",
             "MatchingTrainer.eval_nfe = 2", "MatchingTrainer.checkpoint_every = 3", "MatchingTrainer.device = 'cpu'",
             "MatchingTrainer.lr = 1e-2", f"MatchingTrainer.steps = {steps}", *extra]
    if resume:
        return run(None, [f"MatchingTrainer.steps = {steps}"], out=out, resume=True, progress=False)
    return run(ROOT / "gin" / "base" / "gmm_2d.gin", binds, out=out, progress=False)


def test_matching_trainer_resumes_exactly(tmp_path):
    whole = gmm_teacher_run(tmp_path / "whole", 6)
    gmm_teacher_run(tmp_path / "split", 3)
    resumed = gmm_teacher_run(tmp_path / "split", 6, resume=True)
    for a, b in zip(whole.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    rows = lambda out: [{k: v for k, v in r.items() if k != "wall_time"}  # noqa: E731
                        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert rows(tmp_path / "whole") == rows(tmp_path / "split")


def test_time_limit_stops_with_a_final_checkpoint(tmp_path):
    trainer = gmm_teacher_run(tmp_path / "run", 10**6, ("MatchingTrainer.time_limit = 0.5",
                                                       "MatchingTrainer.checkpoint_every = 1000000",
                                                       "MatchingTrainer.eval_every = 1000000"))
    assert 0 < trainer.step < 10**6 and trainer.wall_time >= 0.5
    last = checkpoints(tmp_path / "run" / "checkpoints")[-1]
    assert load_checkpoint(last)["step"] == trainer.step
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == trainer.step


def test_missing_tensorboard_is_skipped_with_a_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # import fails as if not installed
    gmm_teacher_run(tmp_path / "run", 3)
    assert "tensorboard is not installed" in capsys.readouterr().err
    assert not (tmp_path / "run" / "tensorboard").exists() and (tmp_path / "run" / "metrics.jsonl").is_file()
