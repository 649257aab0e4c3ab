"""realuid.models.export: an export loaded in a new process gives the run's own samples bit for bit; bad ones fail.

The round trips train real runs, export them and load the export with
``realuid.load_generator`` / ``realuid.load_teacher`` in a subprocess (nothing
of the run or of gin imported there): the same noise, saved to a file, must
give the same samples as the trainer's own EMA sampler. Tampered exports must
fail with a UserError that names the file and the tensor.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import single_thread
from realuid.engine.runner import run
from realuid.errors import UserError
from realuid.models.export import CONFIG_FILE, WEIGHTS_FILE, export_run, load_generator, load_teacher, read_config
from realuid.models.loading import load_trained

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
SMOKE_PRESET = ROOT / "gin" / "smoke" / "smoke.gin"
SHARDS = Path(os.environ.get("REALUID_CIFAR10") or ROOT.parent / "shared" / "data" / "cifar10")
if not (SHARDS / "train-000000.tar.gz").is_file():
    SHARDS = Path("/work/shared/data/cifar10")
needs_shards = pytest.mark.skipif(not (SHARDS / "train-000000.tar.gz").is_file(), reason="no CIFAR-10 shards")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "REALUID_CIFAR10": str(SHARDS)}
GMM = ["TrainingLoop.steps = 6", "TrainingLoop.batch_size = 64", "TrainingLoop.eval_every = 3",
       "TrainingLoop.eval_samples = 128", "TrainingLoop.checkpoint_every = 3", "DistillationTrainer.fake_steps = 2",
       "DistillationTrainer.warmup_steps = 0", "MLP.hidden = 16"]

#: the fresh process: load the export, apply it to the saved noise, save the result (safetensors: no pickle)
LOAD = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    import realuid
    from safetensors.torch import load_file, save_file
    folder, inputs, output, kind = sys.argv[1:5]
    x = load_file(inputs)
    with torch.no_grad():
        if kind == "student":
            G = realuid.load_generator(folder)
            out = G(x["z"], x.get("labels"))
        else:
            from realuid.sampling import sample_teacher
            f = realuid.load_teacher(folder)
            out = sample_teacher(f, f.parameterization, f.path, x["z"], x.get("labels"), nfe=int(x["nfe"]),
                                 solver="heun")
    assert "gin" not in sys.modules or not __import__("gin").config_str(), "the loader parsed gin"
    save_file({"x": out.contiguous()}, output)
""")


def in_fresh_process(folder: Path, inputs: dict, kind: str, tmp: Path) -> torch.Tensor:
    save_file(inputs, str(tmp / "inputs.safetensors"))
    result = subprocess.run([sys.executable, "-c", LOAD, str(folder), str(tmp / "inputs.safetensors"),
                             str(tmp / "output.safetensors"), kind], env=ENV, capture_output=True, text=True,
                            timeout=300, cwd=tmp)
    assert result.returncode == 0, result.stderr
    return load_file(str(tmp / "output.safetensors"))["x"]


def trainer_noise(loop, n: int, seed: int) -> torch.Tensor:
    """The noise ``trainer.sample(n, seed)`` draws (one chunk: n <= 4 x batch size)."""
    assert n <= 4 * loop.batch_size
    rng = torch.Generator(loop.device).manual_seed(seed)
    return torch.randn(n, *loop.trainer.shape, generator=rng, device=loop.device, dtype=loop.dtype)


# -- a GMM student ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gmm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gmm")
    with single_thread():
        loop = run(ROOT / "gin" / "realuid_fm_gmm.gin", GMM, out=tmp / "run", progress=False)
        export_run(tmp / "run", tmp / "export")
    return loop, tmp


def test_gmm_export_reproduces_the_runs_samples_bit_for_bit_in_a_fresh_process(gmm, tmp_path):
    loop, folder = gmm
    expected = loop.trainer.sample(16, seed=123)
    z = trainer_noise(loop, 16, 123)
    with torch.no_grad():   # calibration: this z is the trainer's noise
        assert torch.equal(loop.trainer.ema.model(z), expected)
    samples = in_fresh_process(folder / "export", {"z": z}, "student", tmp_path)
    assert torch.equal(samples, expected)
    assert not torch.equal(in_fresh_process(folder / "export", {"z": z + 1e-3}, "student", tmp_path), expected)


def test_gmm_config_json_is_plain_and_names_the_run(gmm):
    _, folder = gmm
    config = json.loads((folder / "export" / CONFIG_FILE).read_text())
    assert config["kind"] == "student" and config["format_version"] == 1
    # the main job's generator: 4 hidden layers, reading 3 z (gin/realuid_fm_gmm.gin)
    assert config["backbone"] == {"name": "MLP", "kwargs": {"dim": 2, "hidden": 16, "depth": 4, "time_dim": 32,
                                                            "num_classes": 0, "cond_dim": 0}}
    assert config["generator"]["name"] == "OneStepGenerator"
    assert config["generator"]["kwargs"] == {"parameterization": "x0", "time": None, "noise_scale": 3.0,
                                                  "skip": 0.0}
    assert config["path"]["name"] == "RectifiedFlow" and config["time"]["generator_time"] == 1.0
    assert config["shape"] == [2] and config["num_classes"] == 0
    training = config["training"]
    assert training["step"] == 6 and training["recipe"].endswith("realuid_fm_gmm.gin")
    assert training["metrics"]["step"] == 6 and "sw" in training["metrics"]
    checkpoint = Path(training["checkpoint"])
    assert training["checkpoint_sha256"] == checkpoint.with_name(checkpoint.name + ".sha256").read_text().strip()


def test_loading_ignores_the_callers_gin_config(gmm):
    import gin

    _, folder = gmm
    reference = load_generator(folder / "export")
    gin.parse_config("MLP.hidden = 7\nOneStepGenerator.noise_scale = 3.0")
    loaded = load_generator(folder / "export")
    assert gin.config_str().count("hidden = 7") == 1   # untouched
    z = torch.randn(5, 2)
    assert torch.equal(loaded(z), reference(z))


def test_a_gmm_export_samples_through_load_trained(gmm):
    _, folder = gmm
    model = load_trained(folder / "export")
    assert model.kind == "student" and model.shape == (2,) and model.step == 6
    z = torch.randn(4, 2)
    assert torch.equal(model.module(z), load_generator(folder / "export")(z))


# -- bad exports -----------------------------------------------------------------------------------------------------
@pytest.fixture
def copy(gmm, tmp_path):
    _, folder = gmm
    target = tmp_path / "copy"
    shutil.copytree(folder / "export", target)
    return target


def test_a_tensor_of_the_wrong_shape_is_named_with_both_shapes(copy):
    tensors = load_file(str(copy / WEIGHTS_FILE))
    tensors["network.net.0.weight"] = torch.zeros(3, 3)
    save_file(tensors, str(copy / WEIGHTS_FILE))
    with pytest.raises(UserError) as err:
        load_generator(copy)
    assert "'network.net.0.weight'" in err.value.what and "(3, 3)" in err.value.what
    assert "(16, 34)" in err.value.what


def test_a_missing_tensor_is_named(copy):
    tensors = load_file(str(copy / WEIGHTS_FILE))
    del tensors["network.net.2.bias"]
    save_file(tensors, str(copy / WEIGHTS_FILE))
    with pytest.raises(UserError, match="lacks the tensor 'network.net.2.bias'"):
        load_generator(copy)


def test_changed_values_fail_the_recorded_sha256(copy):
    tensors = load_file(str(copy / WEIGHTS_FILE))
    tensors["network.net.2.bias"] += 1
    save_file(tensors, str(copy / WEIGHTS_FILE))
    with pytest.raises(UserError, match="was changed after it was exported"):
        load_generator(copy)


@pytest.mark.parametrize("case, match", [
    ("unreadable", "cannot be read as a safetensors file"),
    ("no-config", "has no config.json beside its model.safetensors"),
    ("not-json", "is not valid JSON"),
    ("version", "has format version 99; realuid .* reads version 1"),
    ("backbone", "names the backbone 'MLPP', and no registered component is called so"),
    ("teacher", "holds a one-step student, not a teacher"),
], ids=["unreadable", "no-config", "not-json", "version", "backbone", "teacher"])
def test_bad_export_folders_are_refused(copy, case, match):
    config = json.loads((copy / CONFIG_FILE).read_text())
    if case == "unreadable":
        (copy / WEIGHTS_FILE).write_bytes(b"\x00" * 64)
    elif case == "no-config":
        (copy / CONFIG_FILE).unlink()
    elif case == "not-json":
        (copy / CONFIG_FILE).write_text('{"format": "realuid-export",')
    elif case == "version":
        config["format_version"] = 99
    elif case == "backbone":
        config["backbone"]["name"] = "MLPP"
    if case in ("version", "backbone"):
        (copy / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(UserError, match=match) as err:
        (load_teacher if case == "teacher" else load_generator)(copy)
    assert err.value.fix


def test_export_refuses_a_taken_out_and_leaves_it_as_it_was(gmm, tmp_path):
    _, folder = gmm
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists and is not empty"):
        export_run(folder / "run", taken)
    with pytest.raises(UserError, match="not a realuid export folder"):
        export_run(folder / "run", taken, overwrite=True)
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    again = tmp_path / "again"
    shutil.copytree(folder / "export", again)
    export_run(folder / "run", again, overwrite=True)       # an export folder is replaced
    assert read_config(again, "test")["training"]["step"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "taken"]   # no temporary folder left


# -- a smoke CIFAR student and its teacher ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """``realuid_fm_cifar.gin`` with the smoke preset from a folder with no runs/: its teacher is trained first."""
    tmp = tmp_path_factory.mktemp("cifar")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    old_root = os.environ.get("REALUID_CIFAR10")
    os.environ["REALUID_CIFAR10"] = str(SHARDS)
    try:
        with contextlib.chdir(tmp):
            loop = run(ROOT / "gin" / "realuid_fm_cifar.gin",
                       [f"include '{SMOKE_PRESET}'", "CheckpointTeacher.train_missing = True"], out=tmp / "student",
                       progress=False)
            export_run(tmp / "student", tmp / "student_export")
            export_run(tmp / "runs" / "smoke" / "fm_cifar_teacher", tmp / "teacher_export")
    finally:
        torch.set_num_threads(threads)
        if old_root is None:
            os.environ.pop("REALUID_CIFAR10", None)
        else:
            os.environ["REALUID_CIFAR10"] = old_root
    return loop, tmp


@pytest.mark.slow
@needs_shards
def test_cifar_student_export_reproduces_the_runs_samples_bit_for_bit(cifar, tmp_path):
    loop, folder = cifar
    assert (folder / "runs" / "smoke" / "fm_cifar_teacher" / "checkpoints").is_dir()   # trained first
    expected = loop.trainer.sample(8, seed=7)
    z = trainer_noise(loop, 8, 7)
    with torch.no_grad():
        assert torch.equal(loop.trainer.ema.model(z), expected)
    assert torch.equal(in_fresh_process(folder / "student_export", {"z": z}, "student", tmp_path), expected)
    config = read_config(folder / "student_export", "test")
    assert config["backbone"]["name"] == "UNet" and config["backbone"]["kwargs"]["model_channels"] == 16
    assert config["backbone"]["kwargs"]["channel_mult"] == [1, 2] and config["resolution"] == 32


@pytest.mark.slow
@needs_shards
def test_cifar_teacher_export_reproduces_the_teachers_ode_samples(cifar, tmp_path):
    _, folder = cifar
    teacher = load_trained(folder / "runs" / "smoke" / "fm_cifar_teacher")   # the gin-built EMA teacher
    z = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    from realuid.sampling import sample_teacher

    expected = sample_teacher(teacher.module, teacher.parameterization, teacher.path, z, None, nfe=3)
    got = in_fresh_process(folder / "teacher_export", {"z": z, "nfe": torch.tensor(3)}, "teacher", tmp_path)
    assert torch.equal(got, expected)
    with pytest.raises(UserError, match="holds a teacher, not a one-step generator"):
        load_generator(folder / "teacher_export")
