"""The bad-input battery: every case through the real CLI, exit code 2, one clear paragraph, no traceback.

Each case is a command line (``{tmp}`` is the test's temporary folder), the
substrings its message must contain, and optionally a set-up that writes the
files it needs. Every ``run`` case gets ``--out {tmp}/out`` (unless it names
its own), and that folder must not exist (or be empty) afterwards: a run that
fails at start writes nothing.

``python tests/cli/test_bad_inputs.py`` prints the table of docs/RELIABILITY.md
(case, the message a user sees, the test id).
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from typer.testing import CliRunner

from realuid.cli import app

ROOT = Path(__file__).resolve().parents[2]
R = "gin/uid_fm_gmm.gin"
QUICK = ["-b", "TrainingLoop.steps = 2", "-b", "TrainingLoop.batch_size = 8",
         "-b", "TrainingLoop.eval_samples = 16", "--no-progress"]


@dataclass
class Case:
    id: str
    area: str
    args: list[str]
    expect: list[str]
    setup: Callable[[Path], None] | None = None
    code: int = 2
    paragraph: bool = True  # what / Where: / Fix: (False only for the option parser's own usage errors)
    out: bool = True  # add --out {tmp}/out and check it stays empty
    note: str = ""  # what the set-up writes (for the table in docs/RELIABILITY.md)


def binds(*bindings: str) -> list[str]:
    return ["run", R, *[a for b in bindings for a in ("-b", b)]]


# -- set-ups ---------------------------------------------------------------------------------------
def write(name: str, text: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(text)
    return setup


def mkdir(name: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).mkdir(parents=True, exist_ok=True)


def jpeg(height: int = 32, width: int = 32) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


def shard(members: dict[str, bytes] | None) -> Callable[[Path], None]:
    """A CIFAR shard folder {tmp}/cifar with train-000000.tar.gz holding ``members`` (None: no shard at all)."""
    def setup(tmp: Path) -> None:
        folder = tmp / "cifar"
        folder.mkdir()
        if members is None:
            (folder / "README.txt").write_text("no shards here")
            return
        with tarfile.open(folder / "train-000000.tar.gz", "w:gz") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return setup


CIFAR = ["DistillationTrainer.data = @CIFAR10Shards()", "CIFAR10Shards.root = '{tmp}/cifar'",
         "CIFAR10Shards.num_workers = 0"]
TEACHER3D = ["AnalyticTeacher.mixture = @teacher/GaussianMixture()",
             "teacher/GaussianMixture.means = [[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 3.0, 0.0]]"]

TEACHER = ["run", "gin/fm_cifar_teacher.gin", "-b", "MatchingTrainer.data = @TwoMoons()",
           "-b", "MatchingTrainer.network = @MLP()", "-b", "MLP.dim = 2"]   # a MatchingTrainer without CIFAR-10
NO_MODEL = "no_such_model does not exist: the NFE is checked before the model is looked up and loaded"

CASES = [
    # CLI arguments
    Case("no-recipe", "CLI", ["run"], ["no recipe given", "RECIPE argument"]),
    Case("missing-recipe", "CLI", ["run", "gin/no_such_recipe.gin"],
         ["recipe 'gin/no_such_recipe.gin' does not exist", "see the gin/ folder"]),
    Case("recipe-is-a-folder", "CLI", ["run", "gin"], ["is a folder, not a .gin file"]),
    Case("missing-resume-folder", "CLI", ["run", "--resume", "{tmp}/nowhere"],
         ["the run folder {tmp}/nowhere does not exist", "--resume"], out=False),
    Case("resume-not-a-run-folder", "CLI", ["run", "--resume", "{tmp}/empty"],
         ["{tmp}/empty is not a run folder (no config.gin)"], setup=mkdir("empty"), out=False, note="{tmp}/empty is an empty folder"),
    Case("resume-without-checkpoint", "CLI", ["run", "--resume", "{tmp}/fresh", "--no-progress"],
         ["no usable checkpoint in {tmp}/fresh/checkpoints", "--overwrite"],
         setup=write("fresh/config.gin", (ROOT / R).read_text()), out=False,
         note="{tmp}/fresh holds a config.gin and no checkpoints"),
    Case("resume-and-other-out", "CLI", ["run", "--resume", "{tmp}/empty", "--out", "{tmp}/other"],
         ["--out and --resume name different folders"], setup=mkdir("empty"), out=False, note="{tmp}/empty is an empty folder"),
    Case("resume-and-overwrite", "CLI", ["run", "--resume", "{tmp}/empty", "--overwrite"],
         ["--resume and --overwrite contradict each other"], setup=mkdir("empty"), out=False, note="{tmp}/empty is an empty folder"),
    Case("unknown-import", "CLI", ["run", R, "--import", "no_such_module_xyz"],
         ["cannot import 'no_such_module_xyz'", "--import"]),
    Case("seed-not-an-integer", "CLI", ["run", R, "--seed", "abc"], ["Invalid value for '--seed'", "valid integer"],
         paragraph=False),
    Case("seed-too-large", "CLI", ["run", R, "--seed", str(2**63)],
         ["TrainingLoop.seed (realuid run --seed) = 9,223,372,036,854,775,808 is too large: it must be at most "
          "4,611,686,018,427,387,904", "to an integer from 0 to 4,611,686,018,427,387,904"]),
    Case("unknown-kind", "CLI", ["list-components", "--kind", "paths"], ["unknown kind 'paths'", "use one of path, "],
         out=False),
    Case("show-unknown-component", "CLI", ["show", "RealUDI"], ["no component is called 'RealUDI'",
                                                                "did you mean 'RealUID'"], out=False),
    # recipes and bindings
    Case("unknown-component", "binding", binds("DistillationTrainer.objective = @RealUDI()"),
         ["no component or configurable is called 'RealUDI'", "did you mean 'RealUID'",
          "Components of kind 'objective'"]),
    Case("unknown-configurable", "binding", binds("RectifedFlow.t_min = 0.01"),
         ["called 'RectifedFlow'", "did you mean 'RectifiedFlow'"]),
    Case("unknown-parameter", "binding", binds("RealUID.alfa = 0.5"),
         ["RealUID has no parameter 'alfa'", "RealUID takes: alpha, beta, gamma, distance"]),
    Case("binding-without-equals", "binding", binds("RealUID.alpha 0.5"),
         ["the binding 'RealUID.alpha 0.5' is malformed", "Name.param = value"]),
    Case("binding-unclosed-bracket", "binding", binds("GaussianMixture.weights = [1.0, 2.0"),
         ["ends inside an open bracket or string", "--bind 'GaussianMixture.weights = [1.0, 2.0'"]),
    Case("binding-unreadable-value", "binding", binds("GaussianMixture.stds = nan"),
         ["cannot read the value 'nan'", "Python literals"]),
    Case("logit-normal-scale-not-positive", "binding",
         ["run", "gin/fgm_fm_gmm.gin", "-b", "LogitNormalFlow.s = -1"],
         ["LogitNormalFlow.s = -1 breaks the rule 0.0 < LogitNormalFlow.s", "bind LogitNormalFlow.s to a value"]),
    Case("recipe-syntax-error", "recipe", ["run", "{tmp}/broken.gin"], ["malformed recipe or binding",
                                                                         "broken.gin"],
         setup=write("broken.gin", "include 'gin/base/gmm_2d.gin'\nRealUID.alpha == 0.5\n"),
         note="line 2 of the recipe reads `RealUID.alpha == 0.5`"),
    Case("recipe-missing-include", "recipe", ["run", "{tmp}/incl.gin"],
         ["a file the recipe includes cannot be opened", "gin/base/no_such_base.gin"],
         setup=write("incl.gin", "include 'gin/base/no_such_base.gin'\n"),
         note="the recipe includes a file that does not exist"),
    Case("recipe-macro-unset", "recipe", ["run", "gin/realuid_ft_fm_gmm.gin"],
         ["the recipe uses the macro %FIRST_STAGE, which no binding sets",
          'bind it with --bind "FIRST_STAGE = VALUE"'], note="the second stage's recipe without FIRST_STAGE"),
    Case("recipe-leaves-required-unset", "recipe", ["run", "{tmp}/bare.gin"],
         ["the recipe leaves a required parameter unset"],
         setup=write("bare.gin", "experiment.trainer = @DistillationTrainer\n"),
         note="the recipe only names the trainer"),
    # numeric parameters: range and type
    Case("alpha-zero", "range", binds("RealUID.alpha = 0.0"), ["RealUID.alpha = 0.0 breaks the rule 0.0 < "
                                                                  "RealUID.alpha <= 1.0"]),
    Case("alpha-above-one", "range", binds("RealUID.alpha = 1.5"), ["RealUID.alpha = 1.5 breaks the rule"]),
    Case("beta-zero", "range", binds("RealUID.alpha = 0.9", "RealUID.beta = 0.0"),
         ["RealUID.beta = 0.0 breaks the rule 0.0 < RealUID.beta <= 1.0"]),
    Case("alpha-one-beta-below", "range", binds("RealUID.beta = 0.9"),
         ["RealUID.alpha = 1 requires RealUID.beta = 1"]),
    Case("gamma-one", "range", binds("RealUID.alpha = 0.9", "RealUID.beta = 0.9", "RealUID.gamma = 1.0"),
         ["RealUID.gamma = 1 requires alpha = beta = 1"]),
    Case("alpha-wrong-type", "type", binds("RealUID.alpha = 'half'"),
         ["RealUID.alpha must be a number, got 'half' (str)", "no quotes"]),
    Case("lr-zero", "range", binds("DistillationTrainer.lr_generator = 0.0"),
         ["DistillationTrainer.lr_generator = 0.0 breaks the rule 0.0 < DistillationTrainer.lr_generator"]),
    Case("lr-negative", "range", binds("DistillationTrainer.lr_fake = -0.001"),
         ["DistillationTrainer.lr_fake = -0.001 breaks the rule"]),
    Case("lr-infinite", "range", binds("DistillationTrainer.lr_generator = 1e999"),
         ["DistillationTrainer.lr_generator = inf is not a finite number"]),
    Case("lr-wrong-type", "type", binds("DistillationTrainer.lr_generator = 'fast'"),
         ["DistillationTrainer.lr_generator must be a number, got 'fast'"]),
    Case("K-zero", "range", binds("DistillationTrainer.fake_steps = 0"),
         ["DistillationTrainer.fake_steps must be a positive integer, got 0"]),
    Case("K-not-integer", "type", binds("DistillationTrainer.fake_steps = 2.5"),
         ["DistillationTrainer.fake_steps must be a positive integer, got 2.5"]),
    Case("batch-size-zero", "range", binds("TrainingLoop.batch_size = 0"),
         ["TrainingLoop.batch_size must be a positive integer, got 0",
          "bind TrainingLoop.batch_size to an integer from 1 to 2,147,483,647"]),
    Case("batch-size-negative", "range", binds("TrainingLoop.batch_size = -8"),
         ["TrainingLoop.batch_size must be a positive integer, got -8"]),
    Case("steps-zero", "range", binds("TrainingLoop.steps = 0"),
         ["TrainingLoop.steps must be a positive integer, got 0"]),
    Case("steps-wrong-type", "type", binds("TrainingLoop.steps = 'ten'"),
         ["TrainingLoop.steps must be a positive integer, got 'ten'"]),
    Case("steps-not-an-integer", "type", binds("TrainingLoop.steps = 2.5"),
         ["TrainingLoop.steps must be a positive integer, got 2.5 (float)",
          "bind TrainingLoop.steps to an integer from 1 to 99,999,999"]),
    Case("steps-too-large", "range", binds("TrainingLoop.steps = 100000000"),
         ["TrainingLoop.steps = 100,000,000 is too large: it must be at most 99,999,999",
          "Where: the value bound to TrainingLoop.steps"]),
    Case("adam-beta-above-one", "range", binds("DistillationTrainer.betas = (1.5, 0.999)"),
         ["DistillationTrainer.betas[0] = 1.5 breaks the rule 0.0 <= DistillationTrainer.betas[0] < 1.0"]),
    Case("ema-decay-one", "range", binds("DistillationTrainer.ema_decay = 1.0"),
         ["DistillationTrainer.ema_decay = 1.0 breaks the rule"]),
    Case("warmup-negative", "range", binds("DistillationTrainer.warmup_steps = -5"),
         ["DistillationTrainer.warmup_steps must be an integer >= 0, got -5"]),
    Case("checkpoint-every-zero", "range", binds("TrainingLoop.checkpoint_every = 0"),
         ["TrainingLoop.checkpoint_every must be a positive integer, got 0"]),
    Case("unknown-lr-decay", "value", binds("DistillationTrainer.lr_decay = 'exp'"),
         ["unknown lr decay 'exp'", "'constant', 'cosine', 'linear'"]),
    Case("unknown-dtype", "value", binds("TrainingLoop.dtype = 'float16'"),
         ["unknown dtype 'float16'", "'float32', 'float64'"]),
    Case("unknown-parallel", "value", binds("TrainingLoop.parallel = 'zero3'"),
         ["TrainingLoop.parallel = 'zero3' is not 'ddp' or 'fsdp'"]),
    Case("fsdp-compiled", "value", binds("TrainingLoop.parallel = 'fsdp'", "TrainingLoop.compile = True"),
         ["with TrainingLoop.parallel = 'fsdp' is not supported yet", "TrainingLoop.parallel = 'ddp'"]),
    Case("unknown-device", "value", binds("TrainingLoop.device = 'tpu'"),
         ["'tpu' is not a device", "'auto', 'cpu' or 'cuda[:i]'"]),
    Case("unknown-parameterization", "value", binds("DistillationTrainer.parameterization = 'velocityy'"),
         ["does not support the parameterisation 'velocityy'", "velocity, x0, epsilon, score"]),
    Case("unknown-init", "value", binds("DistillationTrainer.generator_init = 'pretrained'"),
         ["DistillationTrainer.generator_init = 'pretrained' is not 'scratch' or 'teacher'"]),
    # data: Gaussian mixtures
    Case("means-not-numbers", "data", binds("GaussianMixture.means = 'abc'"),
         ["GaussianMixture.means must be a K x D list of numbers", "[[x, y], ...]"]),
    Case("means-ragged", "data", binds("GaussianMixture.means = [[1.0, 2.0], [3.0]]"),
         ["GaussianMixture.means must be a K x D list of numbers"]),
    Case("means-empty", "data", binds("GaussianMixture.means = []"),
         ["GaussianMixture.means must be K x D, got shape (0, 1)"]),
    Case("weights-wrong-count", "data", binds("GaussianMixture.weights = [1.0, 1.0]"),
         ["GaussianMixture.weights must be 3 positive numbers, got [1.0, 1.0]"]),
    Case("weights-negative", "data", binds("GaussianMixture.weights = [1.0, -1.0, 1.0]"),
         ["GaussianMixture.weights must be 3 positive numbers"]),
    Case("stds-negative", "data", binds("GaussianMixture.stds = -0.5"),
         ["GaussianMixture.stds must be a positive scalar, 3 values or 3 x 2, got -0.5"]),
    Case("stds-wrong-count", "data", binds("GaussianMixture.stds = [0.5, 0.5]"),
         ["GaussianMixture.stds must be a positive scalar, 3 values or 3 x 2"]),
    Case("stds-wrong-type", "type", binds("GaussianMixture.stds = 'wide'"),
         ["GaussianMixture cannot be built from its bindings", "realuid show GaussianMixture"]),
    Case("stds-and-covs", "data", binds("GaussianMixture.covs = [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]], "
                                            "[[1.0, 0.0], [0.0, 1.0]]]"),
         ["GaussianMixture takes stds or covs, not both"]),
    Case("covs-not-positive-definite", "data",
         binds("GaussianMixture.stds = None",
               "GaussianMixture.covs = [[[1.0, 2.0], [2.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]], "
               "[[1.0, 0.0], [0.0, 1.0]]]"),
         ["GaussianMixture.covs must be symmetric positive definite"]),
    # data: CIFAR-10 shards
    Case("cifar-missing-folder", "data", binds(*CIFAR), ["the CIFAR-10 shard folder {tmp}/cifar does not exist",
                                                         "REALUID_CIFAR10"]),
    Case("cifar-missing-shard", "data", binds(*CIFAR), ["no train shards", "in {tmp}/cifar"], setup=shard(None),
         note="the folder exists but holds no train-*.tar.gz"),
    Case("cifar-empty-shard", "data", binds(*CIFAR), ["shard train-000000.tar.gz holds no samples"],
         setup=shard({}), note="the only shard is an empty archive"),
    Case("cifar-non-image-member", "data", binds(*CIFAR), ["member 'a.jpg' is not a decodable image",
                                                           "train-000000.tar.gz"],
         setup=shard({"a.jpg": b"this is not a jpeg", "a.cls": b"1"}), note="a.jpg holds text"),
    Case("cifar-wrong-image-shape", "data", binds(*CIFAR), ["image 'a' has shape (16, 24, 3), expected (32, 32, 3)"],
         setup=shard({"a.jpg": jpeg(16, 24), "a.cls": b"1"}), note="a.jpg is 24x16 pixels"),
    Case("cifar-no-image-member", "data", binds(*CIFAR), ["sample 'a' has no jpg member (members: cls, txt)"],
         setup=shard({"a.txt": b"hello", "a.cls": b"1"}), note="sample a has a .txt and no .jpg"),
    Case("cifar-label-out-of-range", "data", binds(*CIFAR), ["sample 'a' has class 12, outside 0..9"],
         setup=shard({"a.jpg": jpeg(), "a.cls": b"12"}), note="a.cls is 12"),
    Case("cifar-label-not-a-number", "data", binds(*CIFAR), ["member 'a.cls'", "invalid literal for int()"],
         setup=shard({"a.jpg": jpeg(), "a.cls": b"abc"}), note="a.cls is the text abc"),
    Case("cifar-shard-not-an-archive", "data", binds(*CIFAR),
         ["cannot read or decode a sample of shard train-000000.tar.gz", "ReadError"],
         setup=write("cifar/train-000000.tar.gz", "not a gzip archive at all"),
         note="train-000000.tar.gz is a text file"),
    # teachers and networks
    Case("teacher-dimension-mismatch", "teacher", binds(*TEACHER3D),
         ["the teacher's mixture has samples of shape (3,) but the data has (2,)"]),
    Case("teacher-wrong-parameterization", "teacher", binds("AnalyticTeacher.parameterization = 'flow'"),
         ["does not support the parameterisation 'flow'", "AnalyticTeacher.parameterization"]),
    Case("teacher-for-non-mixture-data", "teacher",
         binds("DistillationTrainer.data = @TwoMoons()", "DistillationTrainer.metrics = []"),
         ["AnalyticTeacher knows Gaussian mixtures only, but the data is TwoMoons"]),
    Case("network-dimension-mismatch", "teacher", binds("MLP.dim = 3"),
         ["cannot take data of shape (2,)", "MLP.dim"]),
    # disk
    Case("out-under-a-file", "disk", ["run", R, "--out", "{tmp}/a_file/run"],
         ["cannot create the run folder {tmp}/a_file/run: {tmp}/a_file is a file, not a folder"],
         setup=write("a_file", "not a folder"), out=False, note="{tmp}/a_file is a regular file"),
    Case("out-is-a-file", "disk", ["run", R, "--out", "{tmp}/a_file"], ["--out {tmp}/a_file is an existing file"],
         setup=write("a_file", "not a folder"), out=False, note="{tmp}/a_file is a regular file"),
    Case("out-exists-not-empty", "disk", ["run", R, "--out", "{tmp}/taken"],
         ["the run folder {tmp}/taken already exists and is not empty", "--resume", "--overwrite"],
         setup=write("taken/notes.txt", "keep me"), out=False, note="{tmp}/taken holds notes.txt"),
    Case("overwrite-a-non-run-folder", "disk", ["run", R, "--out", "{tmp}/taken", "--overwrite"],
         ["--overwrite would delete {tmp}/taken, which is not a realuid run folder"],
         setup=write("taken/notes.txt", "keep me"), out=False, note="{tmp}/taken holds notes.txt"),
    # sampling: the number of field evaluations (NFE) of `realuid sample` / `realuid eval`, and of a trainer's sampler
    Case("nfe-zero", "NFE", ["sample", "no_such_model", "--nfe", "0", "--out", "{tmp}/out"],
         ["--nfe must be a positive integer (the number of field evaluations of a teacher's ODE), got 0",
          "Where: --nfe", "give --nfe 1 or more"], note=NO_MODEL),
    Case("nfe-negative", "NFE", ["sample", "no_such_model", "--nfe", "-3", "--out", "{tmp}/out"],
         ["--nfe must be a positive integer", "got -3", "Where: --nfe"], note=NO_MODEL),
    Case("nfe-not-an-integer", "NFE", ["sample", "no_such_model", "--nfe", "2.5", "--out", "{tmp}/out"],
         ["--nfe must be a positive integer", "got 2.5", "Where: --nfe"], note=NO_MODEL),
    Case("eval-nfe-zero", "NFE", ["eval", "no_such_model", "--nfe", "0"],
         ["--nfe must be a positive integer", "got 0", "Where: --nfe"], out=False,
         note=NO_MODEL + "; before the FID / FD networks either"),
    Case("eval-nfe-binding-zero", "NFE", [*TEACHER, "-b", "MatchingTrainer.eval_nfe = 0"],
         ["MatchingTrainer.eval_nfe must be a positive integer, got 0",
          "bind MatchingTrainer.eval_nfe to an integer from 1 to 100,000"]),
    Case("eval-nfe-binding-not-an-integer", "NFE", [*TEACHER, "-b", "MatchingTrainer.eval_nfe = 2.5"],
         ["MatchingTrainer.eval_nfe must be a positive integer, got 2.5"]),
]


def invoke(case: Case, tmp: Path, debug: bool = False):
    if case.setup is not None:
        case.setup(tmp)
    args = [a.replace("{tmp}", str(tmp)) for a in case.args]
    if case.out and args[0] == "run":
        args += ["--out", str(tmp / "out")]
    if args[0] == "run":  # before the case's own bindings, which therefore win
        args = ["run", *QUICK, *args[1:]]
    result = CliRunner().invoke(app, (["--debug"] if debug else []) + args)
    return result


pytestmark = pytest.mark.usefixtures("one_thread", "from_repository_root")   # tests/conftest.py


def test_the_battery_is_large_and_ids_are_unique():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path):
    result = invoke(case, tmp_path)
    message = result.stderr.strip()
    assert result.exit_code == case.code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output, result.output
    assert not (result.exception and not isinstance(result.exception, SystemExit)), repr(result.exception)
    for expected in case.expect:
        assert expected.replace("{tmp}", str(tmp_path)) in message, (expected, message)
    if case.paragraph:
        assert message.startswith("error: ") and "\n\n" not in message, message
        assert " Where: " in message and " Fix: " in message, message
    if case.out:  # a failed start leaves no run folder behind
        out = tmp_path / "out"
        assert not out.exists() or not any(out.iterdir())
    for kept in ("taken/notes.txt", "a_file"):
        if (tmp_path / kept).exists():
            assert (tmp_path / kept).read_text() in ("keep me", "not a folder")


def test_debug_shows_the_traceback(tmp_path):
    case = next(c for c in CASES if c.id == "unknown-parameter")
    plain, debug = invoke(case, tmp_path / "a"), invoke(case, tmp_path / "b", debug=True)
    assert plain.exit_code == debug.exit_code == 2
    assert "Traceback" not in plain.stderr and "Traceback (most recent call last)" in debug.stderr
    assert "RealUID has no parameter 'alfa'" in debug.stderr


# in a real process: two cases in the everyday loop (a binding, a count), every other one with the slow tests
REAL_PROCESS = ["unknown-component", "seed-too-large"] + [
    pytest.param(case_id, marks=pytest.mark.slow) for case_id in
    ("teacher-dimension-mismatch", "out-under-a-file", "steps-too-large", "steps-not-an-integer", "batch-size-zero",
     "recipe-macro-unset")]


@pytest.mark.parametrize("case_id", REAL_PROCESS)
def test_real_process_exit_code_and_stderr(case_id, tmp_path):
    """The installed entry point, not only CliRunner: exit status 2, one paragraph on stderr, nothing on stdout."""
    case = next(c for c in CASES if c.id == case_id)
    if case.setup is not None:
        case.setup(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in case.args]
    if case.out:
        args += ["--out", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, "-m", "realuid", args[0], *QUICK, *args[1:]], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr and proc.stdout == ""
    message = " ".join(proc.stderr.split())   # the console wraps long lines
    for expected in case.expect:
        assert expected.replace("{tmp}", str(tmp_path)) in message, (expected, proc.stderr)
    assert " Where: " in message and " Fix: " in message, proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_a_valid_nfe_goes_on_to_the_model(command, tmp_path):
    """Calibration of the NFE cases: with --nfe 2 the same command goes on to the expensive work (sample: looking
    up the model; eval: its FD classifier) and fails there, so in the cases the NFE was refused before it."""
    args = [command, "no_such_model", "--nfe", "2"] + (["--out", str(tmp_path / "out")] if command == "sample" else
                                                        ["--no-fid", "--fd-classifier", str(tmp_path / "none.pt")])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--nfe must be" not in result.stderr, result.stderr
    expected = "no trained model called 'no_such_model'" if command == "sample" else "none.pt does not exist"
    assert expected in result.stderr, result.stderr


def test_nfe_not_an_integer_in_a_real_process(tmp_path):
    """`--nfe 2.5` was the option parser's usage error (a boxed 'Invalid value'); now the one-paragraph message."""
    proc = subprocess.run([sys.executable, "-m", "realuid", "sample", "no_such_model", "--nfe", "2.5", "--out",
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: --nfe must be a positive integer") and "got 2.5" in proc.stderr
    assert "Traceback" not in proc.stderr and "Invalid value" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "out").exists()


def markdown_table() -> str:
    """The docs/RELIABILITY.md table: each case's command, the message observed and its test id."""
    import tempfile

    lines = ["| # | area | case (arguments after `realuid`) | exit | what the user sees | test |",
             "|---|---|---|---|---|---|"]
    for i, case in enumerate(CASES, 1):
        with tempfile.TemporaryDirectory() as tmp:
            result = invoke(case, Path(tmp))
            message = " ".join(result.stderr.split()).replace(tmp, "{tmp}")
        args = " ".join(a if " " not in a else f"'{a}'" for a in case.args).replace("|", "\\|")
        setup = f" ({case.note})" if case.note else ""
        message = message.replace("|", "\\|")
        lines.append(f"| {i} | {case.area} | `{args}`{setup} | {result.exit_code} | {message} | "
                     f"`tests/cli/test_bad_inputs.py::test_bad_input[{case.id}]` |")
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(markdown_table())
