"""The helper library of the CIFAR-10 tools: runs and times their phases, builds their bindings.

Used by ``speedrun_cifar.py``, ``convergence_cifar.py`` and ``bench_ddp.py``;
it measures nothing itself.

:class:`Phases` runs and times phases: every phase is the real command line a
user would type (``realuid run``, ``realuid eval``,
``tools/train_fd_classifier.py``), run as a subprocess so that gin's global
state never leaks between phases; its exact command, wall time and exit code
are recorded and its output is appended to one log. :func:`training_binds`
builds the bindings of a training phase (loop settings on ``TrainingLoop``,
metrics on the trainer); :func:`evaluate` runs ``realuid eval`` of a model.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from realuid.errors import MAX_STEPS

ROOT = Path(__file__).resolve().parents[1]

#: a step count no run reaches (the largest ``TrainingLoop.steps``, checkpoint names have 8 digits): with a
#: time limit, training stops on the clock and the final evaluation and checkpoint come at that step
NEVER = MAX_STEPS

# A 6.5M-parameter variant of the paper's 35.7M U-Net (64 channels, multipliers 1, 2, 2, attention at 16x16):
# small enough to train a usable teacher in minutes of one GPU.
SMALL_UNET = ("UNet.model_channels = 64", "UNet.channel_mult = (1, 2, 2)", "UNet.num_res_blocks = 2",
              "UNet.dropout = 0.0")


def unet_name(smoke: bool, paper_unet: bool) -> str:
    """Which U-Net a tool's runs train: the smoke preset's, the paper's or :data:`SMALL_UNET`."""
    return "smoke preset (tiny)" if smoke else "paper (35.7M)" if paper_unet else "small (6.5M)"


def realuid(*args: str) -> list[str]:
    return [sys.executable, "-m", "realuid", *args]


def binds(bindings) -> list[str]:
    """``-b B`` for each gin binding."""
    return [arg for b in bindings for arg in ("-b", b)]


@dataclass
class Phases:
    """Runs, times and records commands; a failed phase is recorded and reported, never hidden."""

    log: Path
    records: list[dict] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)

    def run(self, name: str, argv: list[str], env: dict | None = None) -> bool:
        return self.run_together(name, [argv], [env])[0]

    def run_together(self, name: str, argvs: list[list[str]], envs: list[dict | None]) -> list[bool]:
        """Start the commands at once and wait for all (phases ``name.0``, ``name.1``, ... when several)."""
        names = [name] if len(argvs) == 1 else [f"{name}.{i}" for i in range(len(argvs))]
        commands = [shlex.join(str(a) for a in argv) for argv in argvs]
        shown = commands[0] if len(argvs) == 1 else f"{len(argvs)} processes at once"
        print(f"=== [{time.perf_counter() - self.start:.0f} s] {name}: {shown}", flush=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        with self.log.open("a") as log:
            log.write(f"=== {name}: {shown}\n")
            log.flush()
            procs = [subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
                     for argv, env in zip(argvs, envs)]
            codes = [proc.wait() for proc in procs]
        seconds = round(time.perf_counter() - began, 2)
        for phase, command, code in zip(names, commands, codes):
            self.records.append({"phase": phase, "command": command, "seconds": seconds, "rc": code})
            if code != 0:
                print(f"!!! phase {phase} failed with exit code {code} (see {self.log})", flush=True)
        return [code == 0 for code in codes]

    def seconds(self, name: str) -> float | None:
        return next((r["seconds"] for r in self.records if r["phase"] == name), None)


def training_binds(trainer: str, *, device: str, precision: str, batch: int, seconds: float, eval_every: int,
                   eval_samples: int, cache: Path, classifier: Path | None, compile_: bool) -> list[str]:
    """Bindings shared by every training phase: device, precision, batch, a time limit instead of a step count.

    Loop settings go to ``TrainingLoop``; the classifier-FD metric (when ``classifier`` is given) to
    ``trainer`` (``MatchingTrainer`` or ``DistillationTrainer``), which owns the metrics.
    """
    out = [f"CIFAR10Shards.cache_dir = '{cache}'", "CIFAR10Shards.num_workers = 8",
           f"TrainingLoop.device = '{device}'", f"TrainingLoop.precision = '{precision}'",
           f"TrainingLoop.batch_size = {batch}", f"TrainingLoop.steps = {NEVER}",
           f"TrainingLoop.time_limit = {seconds}", f"TrainingLoop.eval_every = {eval_every}",
           f"TrainingLoop.checkpoint_every = {NEVER}", f"TrainingLoop.eval_samples = {eval_samples}",
           f"TrainingLoop.compile = {compile_}"]
    if classifier is not None:
        out += [f"ClassifierFD.classifier_path = '{classifier}'", f"{trainer}.metrics = [@ClassifierFD()]"]
    return out


# Smoke settings (CPU, seconds): a tiny classifier on 300 images, reference statistics of 256 images.
SMOKE_CLASSIFIER = ("--limit", "300", "--widths", "8,16", "--num-workers", "1", "--batch-size", "64")
SMOKE_EVAL = ("--reference-limit", "256")


def ensure_classifier(phases: Phases, path: Path, epochs: int, device: str, smoke: bool = False) -> Path | None:
    """The FD classifier at ``path``, trained first when it does not exist (None if that fails)."""
    if not path.is_file():
        extra = SMOKE_CLASSIFIER if smoke else ("--num-workers", "8")
        phases.run("fd_classifier", [sys.executable, "tools/train_fd_classifier.py", "--out", str(path),
                                     "--manifest", str(path.with_suffix(".toml")), "--epochs", str(epochs),
                                     "--device", device, *extra])
    return path if path.is_file() else None


def evaluate(phases: Phases, name: str, source: Path, classifier: Path, out: Path, *, num: int, device: str,
             precision: str, nfe: int | None = None, smoke: bool = False) -> dict | None:
    """Classifier FD (and precision/recall, images/s) of a model through ``realuid eval``; None if it failed."""
    json_path = out / f"{name}.json"
    argv = realuid("eval", str(source), "--no-fid", "--fd-classifier", str(classifier), "--num", str(num),
                   "--batch-size", "1000", "--device", device, "--precision", precision, "--json", str(json_path),
                   "--grid", str(out / f"{name}.png"), *(SMOKE_EVAL if smoke else ()))
    if nfe is not None:
        argv += ["--nfe", str(nfe), "--solver", "heun"]
    if not phases.run(f"eval_{name}", argv) or not json_path.is_file():
        return None
    info = json.loads(json_path.read_text())
    return {**info.get("metrics", {}), "nfe": nfe or 1, "num": info.get("num"),
            "images_per_s": info.get("images_per_s"), "command": phases.records[-1]["command"]}


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
