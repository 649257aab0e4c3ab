"""The paper's CIFAR-10 table in miniature: one kept teacher, the same GPU time per run, several seeds.

One teacher (a flow-matching U-Net, 6.5M parameters, ``tools/cifar_phases.SMALL_UNET``) is trained once
and kept as a bfloat16 export (``realuid export --dtype bfloat16``: 13 MB, small enough to travel back from
a GPU machine); every cell of the table distils or evaluates that same export. A cell is one row of the
table run with one seed:

=====================  ==========================================================================
cell                   what
=====================  ==========================================================================
teacher-nfe1/2/10/100  the teacher's ODE (Heun; NFE 1 is one Euler step), evaluation only
uid                    UID (``gin/uid_fm_cifar.gin``), alpha = beta = 1
realuid-A-B            RealUID (``gin/realuid_fm_cifar.gin``) at (alpha, beta) = (A, B); the table has
                       (0.92, 0.94), (0.94, 0.96), (0.96, 0.94) and (0.94, 0.94) (beta = alpha control)
uid-gan                UID + GAN, the paper's baseline (``gin/uid_gan_fm_cifar.gin``): a discriminator
                       head on the fake U-Net's encoder features, lambda_G = 0.3, lambda_D = 1
realuid-ft             RealUID fine-tuning (``gin/realuid_ft_fm_cifar.gin``, (0.92, 0.86), lr / 10, fake
                       model from the teacher) of the best first-stage RealUID cell found in the results
                       (lowest mean FD), from that cell's generator of the same seed
uid-ft                 its control: the same second stage (same start, lr / 10, fresh fake model, steps)
                       with alpha = beta = 1, i.e. UID without real data: what fine-tuning buys beyond
                       more steps at a lower lr from a fresh fake model
=====================  ==========================================================================

Every distillation trains for ``--seconds`` of training time (``TrainingLoop.time_limit``: evaluations
and checkpoints are not counted), logging the classifier FD of ``--curve-samples`` EMA samples every
``--eval-every`` generator steps; then ``realuid eval`` gives the classifier FD (and precision, recall)
of ``--samples`` samples, and the Inception FID (torch-fidelity) when ``--inception-weights`` is given.
Each cell appends one JSON record (its exact commands, steps, wall times, the FD curve, the final
metrics, the teacher export's sha256) to ``--results``; ``table`` prints mean +- standard deviation over
seeds per cell and draws FD against generator steps and against training wall time (one figure, two
panels; teacher cells as horizontal lines).

    python tools/cifar_table.py teacher --seconds 480                          # once, on the GPU machine
    python tools/cifar_table.py cell uid realuid-0.92-0.94 --seed 0 --seed 1 --seconds 150 --deadline 540
    python tools/cifar_table.py table
    python tools/cifar_table.py teacher --smoke && python tools/cifar_table.py cell uid --smoke   # CPU, tests

``cell`` runs its cells (each for each ``--seed``) in order, skips those already in the results (unless
``--redo``), and stops cleanly before a cell whose expected duration (its earlier records', or a default
from ``--seconds`` and ``--samples``) would run past ``--deadline`` seconds after the command started, so
that a machine's call limit never kills a cell half-way. The first-stage RealUID cells keep their EMA
generator in bfloat16 (``WORK/generators/CELL-sSEED/``, a checkpoint file the second stages start from).

Classifier FD is the Frechet distance in the features of the project's own CIFAR-10 classifier
(``tools/train_fd_classifier.py``, trained into ``--classifier`` when missing): comparable across the
cells of one table, not with published FIDs.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from realuid.devices import COMPILE_MODES
from realuid.errors import MAX_STEPS

from cifar_phases import (NEVER, ROOT, SMALL_UNET, SMOKE_EVAL, Phases, binds, ensure_classifier, read_metrics,
                          realuid, training_binds)

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
console = Console(width=None if sys.stdout.isatty() else 150)

TEACHER_NFES = (1, 2, 10, 100)
REALUID_POINTS = ((0.92, 0.94), (0.94, 0.96), (0.96, 0.94), (0.94, 0.94))
FT_POINT = (0.92, 0.86)   # gin/realuid_ft_fm_cifar.gin's (alpha_FT, beta_FT), the paper's unconditional choice


@dataclass(frozen=True)
class Cell:
    """One row of the table: a teacher evaluation (``nfe``) or a distillation (``recipe`` + ``method``)."""

    name: str
    label: str
    nfe: int | None = None
    recipe: str | None = None
    method: tuple[str, ...] = ()
    alpha: float | None = None
    beta: float | None = None
    second_stage: bool = False   # starts from a kept first-stage generator (realuid-ft and its control)

    @property
    def is_teacher(self) -> bool:
        return self.nfe is not None

    @property
    def is_first_stage(self) -> bool:
        """A RealUID run whose generator a second-stage cell may start from."""
        return self.name.startswith("realuid-") and not self.second_stage


def _realuid_cell(alpha: float, beta: float) -> Cell:
    return Cell(f"realuid-{alpha:g}-{beta:g}", f"RealUID ({alpha:g}, {beta:g})", recipe="gin/realuid_fm_cifar.gin",
                method=(f"RealUID.alpha = {alpha}", f"RealUID.beta = {beta}"), alpha=alpha, beta=beta)


CELLS: dict[str, Cell] = {c.name: c for c in [
    *(Cell(f"teacher-nfe{n}", f"teacher, NFE {n}", nfe=n) for n in TEACHER_NFES),
    Cell("uid", "UID", recipe="gin/uid_fm_cifar.gin", alpha=1.0, beta=1.0),
    *(_realuid_cell(a, b) for a, b in REALUID_POINTS),
    Cell("uid-gan", "UID + GAN (head on the fake encoder)", recipe="gin/uid_gan_fm_cifar.gin", alpha=1.0, beta=1.0),
    Cell("realuid-ft", f"RealUID + fine-tuning ({FT_POINT[0]:g}, {FT_POINT[1]:g})",
         recipe="gin/realuid_ft_fm_cifar.gin", alpha=FT_POINT[0], beta=FT_POINT[1], second_stage=True),
    Cell("uid-ft", "UID continuation (realuid-ft's control: alpha = beta = 1)", recipe="gin/realuid_ft_fm_cifar.gin",
         method=("RealUID.alpha = 1.0", "RealUID.beta = 1.0"), alpha=1.0, beta=1.0, second_stage=True),
]}
FIRST_STAGES = [c for c in CELLS if CELLS[c].is_first_stage]
SECOND_STAGES = [c for c in CELLS if CELLS[c].second_stage]


def parse_cell(name: str) -> Cell:
    """The cell called ``name``: a listed one, or any ``realuid-ALPHA-BETA`` (0 < ALPHA, BETA <= 1)."""
    if name in CELLS:
        return CELLS[name]
    if name.startswith("realuid-") and name.count("-") == 2:
        try:
            alpha, beta = (float(v) for v in name.split("-")[1:])
        except ValueError:
            alpha = beta = math.nan
        if 0 < alpha < 1 and 0 < beta <= 1:
            return _realuid_cell(alpha, beta)
    raise typer.BadParameter(f"unknown cell {name!r}; cells are {', '.join(CELLS)} (or realuid-ALPHA-BETA with "
                             "0 < ALPHA < 1, 0 < BETA <= 1)", param_hint="CELLS")


# -- settings shared by the commands -----------------------------------------------------------------------------
@dataclass
class Setup:
    smoke: bool
    work: Path
    teacher: Path
    classifier: Path
    results: Path
    device: str
    precision: str
    batch: int

    @property
    def smoke_flags(self) -> list[str]:
        return ["--smoke"] if self.smoke else []

    @property
    def unet(self) -> list[str]:
        return [] if self.smoke else list(SMALL_UNET)

    @property
    def loader(self) -> list[str]:
        return ["CIFAR10Shards.num_workers = 1"] if self.smoke else []   # after training_binds' 8


def setup(smoke: bool, work: Optional[Path], teacher: Optional[Path], classifier: Optional[Path],
          results: Optional[Path], device: str, precision: Optional[str], batch: Optional[int]) -> Setup:
    import torch

    work = work or ROOT / ("runs/cifar_table_smoke" if smoke else "runs/cifar_table")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    if device not in ("cuda", "cpu"):
        raise typer.BadParameter(f"--device {device!r} is not auto, cuda or cpu", param_hint="--device")
    if device == "cuda" and not torch.cuda.is_available():
        raise typer.BadParameter("--device cuda but torch sees no GPU", param_hint="--device")
    precision = precision or ("fp32" if smoke else "bf16")
    if precision not in ("fp32", "bf16"):
        raise typer.BadParameter(f"--precision {precision!r} is not fp32 or bf16", param_hint="--precision")
    batch = batch or (8 if smoke else 256)
    if batch < 1:
        raise typer.BadParameter(f"--batch {batch} is not >= 1", param_hint="--batch")
    return Setup(smoke, work, teacher or work / "teacher_export", classifier or work / "fd_classifier.pt",
                 results or (work / "cifar_table.json" if smoke else ROOT / "docs/results/cifar_table.json"),
                 device, precision, batch)


def read_results(path: Path) -> dict:
    if not path.is_file():
        return {"cells": []}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise typer.BadParameter(f"{path} is not valid JSON ({err}); restore it or give another --results",
                                 param_hint="--results") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise typer.BadParameter(f"{path} is not a results file of this tool (no \"cells\" list); give another "
                                 "--results", param_hint="--results")
    return data


def write_results(path: Path, data: dict) -> None:
    from realuid.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False) + "\n")


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def teacher_record(export: Path) -> dict:
    """What identifies the teacher export every cell used: path, sha256 of its weights, its training steps."""
    from realuid.models.export import read_config

    config = read_config(export, "--teacher")
    metrics = (config.get("training") or {}).get("metrics") or {}
    return {"export": str(export), "weights_sha256": config.get("weights_sha256"),
            "weights_dtype": config.get("weights_dtype"), "steps": (config.get("training") or {}).get("step"),
            "wall_time": metrics.get("wall_time")}


# -- teacher -------------------------------------------------------------------------------------------------------
@app.command()
def teacher(seconds: float = typer.Option(480, help="teacher training time (s; evaluations not counted)"),
            lr: float = typer.Option(5e-4, help="teacher learning rate (200-step warm-up, EMA 0.999)"),
            classifier_epochs: int = typer.Option(8, help="epochs of the FD classifier when it is trained"),
            overwrite: bool = typer.Option(False, "--overwrite", help="train again when the export exists"),
            smoke: bool = typer.Option(False, help="seconds-long, tiny, on CPU (tests)"),
            work: Optional[Path] = typer.Option(None, help="work folder (runs/cifar_table)"),
            export: Optional[Path] = typer.Option(None, "--teacher", help="the export to write (WORK/teacher_export)"),
            classifier: Optional[Path] = typer.Option(None, help="FD classifier (WORK/fd_classifier.pt)"),
            results: Optional[Path] = typer.Option(None, help="results JSON (docs/results/cifar_table.json)"),
            device: str = "auto", precision: Optional[str] = None, batch: Optional[int] = None):
    """Train the flow-matching teacher for --seconds and export it in bfloat16; train the FD classifier."""
    s = setup(smoke, work, export, classifier, results, device, precision, batch)
    if smoke:
        seconds, classifier_epochs = min(seconds, 6.0), 1
    if seconds <= 0:
        raise typer.BadParameter(f"--seconds {seconds} is not > 0", param_hint="--seconds")
    data = read_results(s.results)
    phases = Phases(s.work / "log.txt")
    if (s.teacher / "config.json").is_file() and not overwrite:
        console.print(f"the teacher export {s.teacher} exists: kept (--overwrite trains a new one)")
    else:
        run_dir = s.work / "teacher_run"
        ok = phases.run("teacher", realuid(
            "run", "gin/fm_cifar_teacher.gin", *s.smoke_flags, "--out", str(run_dir), "--overwrite", "--no-progress",
            *binds(s.unet + training_binds("MatchingTrainer", device=s.device, precision=s.precision, batch=s.batch,
                                           seconds=seconds, eval_every=NEVER, eval_samples=8 if smoke else 1000,
                                           cache=s.work / "cache", classifier=None, compile_=False) + s.loader),
            *binds([f"MatchingTrainer.lr = {lr}", f"MatchingTrainer.warmup_steps = {0 if smoke else 200}",
                    "MatchingTrainer.ema_decay = 0.999", f"MatchingTrainer.eval_nfe = {2 if smoke else 20}"])))
        ok = ok and phases.run("export", realuid("export", str(run_dir), "--out", str(s.teacher), "--dtype",
                                                 "bfloat16", "--overwrite"))
        if not ok:
            raise SystemExit(f"training or exporting the teacher failed (see {phases.log})")
        rows = read_metrics(run_dir)
        data["teacher"] = {**teacher_record(s.teacher), "seconds": seconds, "lr": lr, "device": device_name(s.device),
                           "commands": [r["command"] for r in phases.records],
                           "train_rate_steps_per_s": rows[-1]["step"] / rows[-1]["wall_time"] if rows else None}
        write_results(s.results, data)
        console.print(f"teacher: {data['teacher']['steps']} steps in {seconds:g} s; export {s.teacher} "
                      f"({(s.teacher / 'model.safetensors').stat().st_size / 2**20:.1f} MiB, bfloat16)")
    clf = ensure_classifier(phases, s.classifier, classifier_epochs, s.device, smoke)
    if clf is None:
        raise SystemExit(f"training the FD classifier {s.classifier} failed (see {phases.log})")
    console.print(f"FD classifier: {clf}")


# -- cells ---------------------------------------------------------------------------------------------------------
def classifier_record(path: Path) -> dict:
    """What identifies the FD classifier a record was measured with: FDs of two classifiers are not comparable."""
    from realuid.io import sha256_file

    return {"path": str(path), "sha256": sha256_file(path)}


def classifier_of(record: dict) -> str | None:
    return (record.get("classifier") or {}).get("sha256")


def budget_of(record: dict) -> str | None:
    """A distillation's training budget, ``"N steps"`` or ``"S s"`` (None for a teacher cell, which fits any).

    Records of two budgets are two tables: a cell's seeds are averaged, and compared, within one budget only.
    """
    if parse_cell(record["cell"]).is_teacher:
        return None
    return record.get("budget") or f"{record['seconds']:g} s"


def record_key(record: dict) -> tuple[str, int, str | None, str | None]:
    return record["cell"], int(record["seed"]), classifier_of(record), budget_of(record)


def current_classifier(data: dict) -> str | None:
    """The classifier of the newest successful record: the one a table of ``data`` is measured with."""
    records = [r for r in data["cells"] if r.get("rc") == 0]
    return classifier_of(max(records, key=lambda r: r.get("created", ""))) if records else None


def current_budget(data: dict) -> str | None:
    """The budget of the newest successful distillation record: the table ``table`` shows unless told another."""
    records = [r for r in data["cells"] if r.get("rc") == 0 and budget_of(r) is not None]
    return budget_of(max(records, key=lambda r: r.get("created", ""))) if records else None


def done(data: dict, classifier: str | None = None, budget: str | None = None) -> dict[tuple[str, int], dict]:
    """The successful records by (cell, seed) measured with ``classifier`` and trained on ``budget`` (defaults:
    :func:`current_classifier`, :func:`current_budget`); teacher cells fit every budget."""
    classifier = classifier or current_classifier(data)
    budget = budget or current_budget(data)
    return {(r["cell"], int(r["seed"])): r for r in data["cells"]
            if r.get("rc") == 0 and classifier_of(r) == classifier and budget_of(r) in (None, budget)}


def expected_seconds(cell: Cell, data: dict, seconds: float, samples: int, inception: bool,
                     steps: int = 0, jobs: int = 1, compiled: bool = False) -> float:
    """How long ``cell`` will take: the longest earlier record of it on this budget, else a default from the budget.

    A step budget's default is the slowest earlier distillation of the same budget and sharing (``jobs``), else a
    guess to be replaced by the first measured record: 1.2 s per generator step eager (four runs sharing an H200
    made 0.5-0.9 steps/s each on 2026-12-03), 0.3 s compiled, plus three minutes of compilation.
    """
    evaluation = 20 + (40 if inception else 0) * samples / 10000
    if cell.is_teacher:
        earlier = [r["cell_seconds"] for r in data["cells"] if r["cell"] == cell.name and r.get("cell_seconds")]
        return max(earlier) if earlier else evaluation + cell.nfe * samples / 15000   # ~150 images/s at NFE 100
    budget = f"{steps} steps" if steps else f"{seconds:g} s"
    same = [r for r in data["cells"] if r.get("cell_seconds") and budget_of(r) == budget
            and not r.get("finished_from")]   # a cell finished apart timed only its evaluation
    earlier = [r["cell_seconds"] for r in same if r["cell"] == cell.name] or \
              [r["cell_seconds"] for r in same if r.get("jobs", 1) == jobs]
    if earlier:
        return max(earlier)
    if steps:
        return 60 + steps * (0.3 if compiled else 1.2) + (180 if compiled else 0) + evaluation
    return seconds + 60 + evaluation   # start, data, in-run evaluations, checkpoint


def best_first_stage(data: dict, classifier: str | None = None, budget: str | None = None) -> tuple[str, float] | None:
    """(cell, mean FD over its seeds) of the first-stage RealUID cell with the lowest mean final FD (on ``budget``)."""
    by_cell: dict[str, list[float]] = {}
    for r in done(data, classifier, budget).values():
        if parse_cell(r["cell"]).is_first_stage and r.get("fd_classifier") is not None:
            by_cell.setdefault(r["cell"], []).append(r["fd_classifier"])
    if not by_cell:
        return None
    name = min(by_cell, key=lambda c: statistics.fmean(by_cell[c]))
    return name, statistics.fmean(by_cell[name])


def budget_name(steps: int, seconds: float) -> str:
    """The budget string of a run: ``"N steps"`` when a step budget is set, else ``"S s"`` of training time."""
    return f"{steps} steps" if steps else f"{seconds:g} s"


def kept_generator(work: Path, cell: str, seed: int, budget: str) -> Path:
    return work / "generators" / f"{cell}-s{seed}-{budget.replace(' ', '')}"


def keep_generator(run_dir: Path, folder: Path) -> Path:
    """The run's EMA generator in bfloat16 as a checkpoint file of its own (what generator_checkpoint loads)."""
    import shutil

    import torch

    from realuid.checkpoints import latest_good, save_checkpoint

    found = latest_good(run_dir / "checkpoints")
    if found is None:
        raise RuntimeError(f"{run_dir} has no checkpoint to keep the generator of")
    _, state = found
    ema = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state["ema"].items()
           if k.startswith("model.")}
    shutil.rmtree(folder, ignore_errors=True)
    return save_checkpoint(folder, int(state["step"]), {"ema": ema, "step": state["step"], "meta": state.get("meta")},
                           keep=1)


def budget_binds(steps: int, compile_mode: str) -> list[str]:
    """Bindings after :func:`cifar_phases.training_binds` (later bindings win): a step budget replaces its time
    limit, and a compile mode other than "off" its default mode."""
    out = [f"TrainingLoop.steps = {steps}", "TrainingLoop.time_limit = 0"] if steps else []
    return out + ([f"TrainingLoop.compile_mode = '{compile_mode}'"] if compile_mode != "off" else [])


def check_compile_mode(mode: str) -> None:
    if mode != "off" and mode not in COMPILE_MODES:
        raise typer.BadParameter(f"--compile-mode {mode!r} is not off or one of {', '.join(COMPILE_MODES)}",
                                 param_hint="--compile-mode")


def eval_files(evaluation: Path) -> tuple[Path, Path]:
    """(JSON, grid) of an evaluation named ``evaluation`` (cell names hold dots: no ``with_suffix``)."""
    return evaluation.with_name(evaluation.name + ".json"), evaluation.with_name(evaluation.name + ".png")


def eval_argv(source: Path, out: Path, s: Setup, clf: Path, samples: int, seed: int, nfe: int | None,
              inception_weights: Optional[Path]) -> list[str]:
    argv = realuid("eval", str(source), "--fd-classifier", str(clf), "--num", str(samples), "--seed", str(seed),
                   "--batch-size", "64" if s.smoke else "1000", "--device", s.device, "--precision", s.precision,
                   "--json", str(eval_files(out)[0]), "--grid", str(eval_files(out)[1]),
                   *(SMOKE_EVAL if s.smoke else ()))
    argv += ["--inception-weights", str(inception_weights), "--no-is"] if inception_weights else ["--no-fid"]
    if nfe is not None:
        argv += ["--nfe", str(nfe), "--solver", "heun"]
    return argv


def run_cell(cell: Cell, seed: int, s: Setup, clf: Path, data: dict, *, seconds: float, samples: int,
             curve_samples: int, eval_every: int, lr: float, fake_steps: int, warmup: int,
             inception_weights: Optional[Path], jobs: int = 1, steps: int = 0, compile_mode: str = "off",
             first_stage: Optional[str] = None) -> dict:
    """Run one cell with one seed; its record (rc != 0 and "error" when a phase failed).

    The budget is ``steps`` generator steps when > 0 (no time limit), else ``seconds`` of training time.
    ``jobs`` is recorded: how many cells shared the device at once (a time budget's step counts depend on it).
    ``compile_mode`` "off" runs the networks eagerly, else ``torch.compile``s them in that mode
    ("reduce-overhead": CUDA graphs). ``first_stage`` is the cell a second stage starts from (None: the best
    first stage in the results on this budget).
    """
    budget = budget_name(steps, seconds)
    name = f"{cell.name}-s{seed}"
    phases = Phases(s.work / "logs" / f"{name}.txt")
    started = time.perf_counter()
    record: dict = {"cell": cell.name, "label": cell.label, "seed": seed, "nfe": cell.nfe or 1,
                    "alpha": cell.alpha, "beta": cell.beta, "teacher": teacher_record(s.teacher),
                    "device": device_name(s.device), "precision": s.precision, "batch": s.batch,
                    "samples": samples, "smoke": s.smoke, "classifier": classifier_record(clf), "jobs": jobs,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    evaluation = s.work / "eval" / name
    evaluation.parent.mkdir(parents=True, exist_ok=True)
    source = s.teacher
    if cell.is_teacher:
        record.update(steps=record["teacher"]["steps"], train_wall_s=record["teacher"]["wall_time"], curve=[])
    else:
        record.update(budget=budget, seconds=None if steps else seconds, steps_budget=steps or None, lr=lr,
                      fake_steps=fake_steps, warmup=warmup, eval_every=eval_every, curve_samples=curve_samples,
                      compile_mode=compile_mode)
        method, offset = list(cell.method), {"steps": 0, "wall_time": 0.0}
        if cell.second_stage:
            best = (first_stage, None) if first_stage else best_first_stage(data, classifier_of(record), budget)
            if best is None:
                return {**record, "rc": 1, "error": "no first-stage RealUID cell in the results: run one of "
                        f"{', '.join(FIRST_STAGES)} first"}
            first = done(data, classifier_of(record), budget).get((best[0], seed))
            kept = kept_generator(s.work, best[0], seed, budget)
            files = sorted(kept.glob("step_*.pt")) if kept.is_dir() else []
            if first is None or not files:
                return {**record, "rc": 1, "error": f"the best first stage is {best[0]}, and its seed-{seed} "
                        f"generator ({kept}) is missing: run `cell {best[0]} --seed {seed}` with this --work and "
                        "budget first, "
                        "or copy the generators/ folder of the allotment that ran it into WORK"}
            method += [f"FIRST_STAGE = '{files[-1]}'", f"DistillationTrainer.warmup_steps = 0"]
            lr = lr / 10
            offset = {"steps": first["steps"], "wall_time": first["train_wall_s"]}
            record.update(first_stage=best[0], first_stage_fd=first["fd_classifier"], lr=lr, offset=offset)
        else:
            method.append(f"DistillationTrainer.warmup_steps = {warmup}")
        run_dir = s.work / "runs" / name
        source = run_dir
        reference = ["ClassifierFD.reference_limit = 256", "ClassifierFD.pr_reference_size = 256"] if s.smoke else []
        ok = phases.run("train", realuid(
            "run", cell.recipe, *s.smoke_flags, "--out", str(run_dir), "--overwrite", "--no-progress", "--seed",
            str(seed),
            *binds(s.unet + training_binds("DistillationTrainer", device=s.device, precision=s.precision,
                                           batch=s.batch, seconds=seconds, eval_every=eval_every,
                                           eval_samples=curve_samples, cache=s.work / "cache", classifier=clf,
                                           compile_=compile_mode != "off") + s.loader),
            *binds([f"CheckpointTeacher.source = '{s.teacher}'", f"DistillationTrainer.lr_generator = {lr}",
                    f"DistillationTrainer.lr_fake = {lr}", f"DistillationTrainer.fake_steps = {fake_steps}",
                    *reference, *method, *budget_binds(steps, compile_mode)])))
        rows = read_metrics(run_dir)
        record["curve"] = [{"step": r["step"], "wall_time": r["wall_time"], "fd": r["fd_classifier"]}
                           for r in rows if "fd_classifier" in r]
        record.update(steps=rows[-1]["step"] if rows else None, train_wall_s=rows[-1]["wall_time"] if rows else None,
                      last_logs={k: v for k, v in (rows[-1] if rows else {}).items() if isinstance(v, (int, float))
                                 and math.isfinite(v)})
        short = ok and steps and record["steps"] != steps   # a run stopped early is not on the budget
        if not ok or short:
            why = f"stopped at step {record['steps']} of the budget's {steps}" if short else "training failed"
            return {**record, "rc": 1, "commands": [r["command"] for r in phases.records],
                    "error": f"{why} (see {phases.log})", "cell_seconds": time.perf_counter() - started}
        if cell.is_first_stage:
            record["generator"] = str(keep_generator(run_dir, kept_generator(s.work, cell.name, seed, budget)))
    return evaluated(record, source, evaluation, s, clf, samples, seed, cell.nfe, inception_weights, phases, started)


def evaluated(record: dict, source: Path, evaluation: Path, s: Setup, clf: Path, samples: int, seed: int,
              nfe: int | None, inception_weights: Optional[Path], phases: Phases, started: float) -> dict:
    """``record`` completed by the final evaluation of ``source`` (rc 0 and the metrics, or rc 1 and the error)."""
    ok = phases.run("eval", eval_argv(source, evaluation, s, clf, samples, seed, nfe, inception_weights))
    record["commands"] = [r["command"] for r in phases.records]
    record["cell_seconds"] = round(time.perf_counter() - started, 2)
    result, grid = eval_files(evaluation)
    if not ok or not result.is_file():
        return {**record, "rc": 1, "error": f"evaluation failed (see {phases.log})"}
    info = json.loads(result.read_text())
    metrics = info.get("metrics", {})
    record.update(rc=0, fd_classifier=metrics.get("fd_classifier"),
                  precision_classifier=metrics.get("precision_classifier"),
                  recall_classifier=metrics.get("recall_classifier"), fid=metrics.get("fid"),
                  images_per_s=info.get("images_per_s"), grid=str(grid))
    return record


@app.command()
def cell(cells: List[str] = typer.Argument(..., help="cells to run in order: " + ", ".join(CELLS)),
         seed: List[int] = typer.Option([0], "--seed", help="seed (repeat for several: --seed 0 --seed 1)"),
         seconds: float = typer.Option(150, help="training time of every distillation (s; evaluations not counted)"),
         steps: int = typer.Option(0, help="a step budget instead: every distillation makes this many generator "
                                           "steps, however long they take (0: --seconds)"),
         compile_mode: str = typer.Option("off", help="off (eager) or a torch.compile mode of the networks: "
                                                      "default, reduce-overhead (CUDA graphs), max-autotune, "
                                                      "max-autotune-no-cudagraphs"),
         samples: int = typer.Option(10000, help="samples of the final classifier FD (and FID)"),
         curve_samples: int = typer.Option(2000, help="samples of each in-run FD evaluation (the curves)"),
         eval_every: int = typer.Option(50, help="generator steps between in-run FD evaluations"),
         lr: float = typer.Option(1e-4, help="generator and fake-model lr (fine-tuning: lr / 10, no warm-up)"),
         fake_steps: int = typer.Option(5, help="fake-model steps per generator step (K)"),
         warmup: int = typer.Option(50, help="lr warm-up steps of a first stage"),
         deadline: float = typer.Option(0, help="stop before a cell that would end later than this many seconds "
                                                "after the start (0: no deadline)"),
         jobs: int = typer.Option(1, help="cells run at once on the device (each record says how many shared it)"),
         redo: bool = typer.Option(False, "--redo", help="run cells already in the results again (replacing them)"),
         first_stage: Optional[str] = typer.Option(None, help="the first-stage cell the second stages start from "
                                                              "(default: the one with the lowest mean FD in the "
                                                              "results)"),
         inception_weights: Optional[Path] = typer.Option(None, help="Inception-v3 weights: also the FID (torch-"
                                                                     "fidelity) of each cell"),
         classifier_epochs: int = typer.Option(8, help="epochs of the FD classifier when it is trained"),
         smoke: bool = typer.Option(False, help="seconds-long, tiny, on CPU (tests)"),
         work: Optional[Path] = typer.Option(None, help="work folder (runs/cifar_table)"),
         export: Optional[Path] = typer.Option(None, "--teacher", help="teacher export (WORK/teacher_export)"),
         classifier: Optional[Path] = typer.Option(None, help="FD classifier (WORK/fd_classifier.pt)"),
         results: Optional[Path] = typer.Option(None, help="results JSON (docs/results/cifar_table.json)"),
         device: str = "auto", precision: Optional[str] = None, batch: Optional[int] = None):
    """Run cells of the table (each with each --seed) from the kept teacher; append one record per cell."""
    started = time.perf_counter()
    chosen = [parse_cell(c) for c in cells]
    for value, hint, low in ((seconds, "--seconds", 1e-9), (samples, "--samples", 2), (curve_samples,
                             "--curve-samples", 2), (eval_every, "--eval-every", 1), (fake_steps, "--fake-steps", 1),
                             (lr, "--lr", 1e-12), (deadline, "--deadline", 0), (warmup, "--warmup", 0),
                             (jobs, "--jobs", 1), (steps, "--steps", 0)):
        if value < low:
            raise typer.BadParameter(f"{hint} {value} is below {low:g}", param_hint=hint)
    if steps > MAX_STEPS:
        raise typer.BadParameter(f"--steps {steps} is above the loop's largest step count {MAX_STEPS:,}",
                                 param_hint="--steps")
    check_compile_mode(compile_mode)
    if first_stage is not None and not any(c.second_stage for c in chosen):
        raise typer.BadParameter(f"--first-stage {first_stage} is only for the second-stage cells "
                                 f"({', '.join(SECOND_STAGES)}), none of which is among the cells run: add one or "
                                 "drop the option", param_hint="--first-stage")
    if first_stage is not None and not parse_cell(first_stage).is_first_stage:
        raise typer.BadParameter(f"{first_stage} is not a first-stage RealUID cell; give one of "
                                 f"{', '.join(FIRST_STAGES)}", param_hint="--first-stage")
    if inception_weights is not None and not inception_weights.is_file():
        raise typer.BadParameter(f"the Inception weights file {inception_weights} does not exist; give the file "
                                 "torch-fidelity reads (weights-inception-2015-12-05-6726825d.pth) or drop the option",
                                 param_hint="--inception-weights")
    s = setup(smoke, work, export, classifier, results, device, precision, batch)
    if smoke:
        seconds, samples, curve_samples, eval_every, classifier_epochs = min(seconds, 6.0), 64, 32, 2, 1
        steps = min(steps, 4)
    budget = budget_name(steps, seconds)
    if not (s.teacher / "config.json").is_file():
        raise typer.BadParameter(f"no teacher export at {s.teacher}: train it with `python tools/cifar_table.py "
                                 f"teacher{' --smoke' if smoke else ''}` (or give --teacher)", param_hint="--teacher")
    data = read_results(s.results)
    clf = ensure_classifier(Phases(s.work / "log.txt"), s.classifier, classifier_epochs, s.device, smoke)
    if clf is None:
        raise SystemExit(f"training the FD classifier {s.classifier} failed (see {s.work / 'log.txt'})")
    clf_sha = classifier_record(clf)["sha256"]
    other = sorted({classifier_of(r) or "?" for r in data["cells"] if classifier_of(r) != clf_sha})
    if other:
        console.print(f"[yellow]note[/]: {s.results} holds records of {len(other)} other FD classifier(s) "
                      f"({', '.join(x[:12] for x in other)}): not comparable with {clf} ({clf_sha[:12]}); those "
                      "cells run again")
    todo = [(c, sd) for c in chosen for sd in seed]
    pending = []
    for i, (c, sd) in enumerate(todo):
        if (c.name, sd) in done(data, clf_sha, budget) and not redo:
            console.print(f"[{i + 1}/{len(todo)}] {c.name} seed {sd}: in {s.results} already on the budget {budget} "
                          "(--redo runs it again)")
        else:
            pending.append((c, sd))
    pending.sort(key=lambda item: item[0].second_stage)   # after every first stage they may start from
    options = dict(seconds=seconds, samples=samples, curve_samples=curve_samples, eval_every=eval_every, lr=lr,
                   fake_steps=fake_steps, warmup=warmup, inception_weights=inception_weights, jobs=jobs, steps=steps,
                   compile_mode=compile_mode, first_stage=first_stage)
    running: dict[Future, tuple[Cell, int]] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:   # threads: each cell's work is in its own subprocesses
        while pending or running:
            while pending and len(running) < jobs:
                c, sd = pending[0]
                waits_for_first_stage = c.second_stage and any(
                    x.is_first_stage for x, _ in [*running.values(), *pending[1:]])
                if waits_for_first_stage:   # fine-tuning starts from the best first stage: all of them first
                    break
                elapsed = time.perf_counter() - started
                need = expected_seconds(c, data, seconds, samples, inception_weights is not None, steps, jobs,
                                        compile_mode != "off")
                if deadline and elapsed + need > deadline:
                    left = "; ".join(f"{x.name} --seed {y}" for x, y in pending)
                    console.print(f"stopping before {c.name} seed {sd}: it takes about {need:.0f} s and "
                                  f"{deadline - elapsed:.0f} s are left before the deadline; not run: {left}")
                    pending = []
                    break
                pending.pop(0)
                console.print(f"{c.name} seed {sd}: started (about {need:.0f} s; {elapsed:.0f} s elapsed, "
                              f"{len(running) + 1} of {jobs} slots busy)")
                running[pool.submit(run_cell, c, sd, s, clf, data, **options)] = (c, sd)
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                c, sd = running.pop(future)
                record = future.result()
                data["cells"] = [r for r in data["cells"] if record_key(r) != record_key(record)] + [record]
                write_results(s.results, data)
                if record["rc"] != 0:
                    console.print(f"[red]{c.name} seed {sd} failed[/]: {record['error']}")
                else:
                    console.print(f"{c.name} seed {sd}: classifier FD {record['fd_classifier']:.3f}, "
                                  f"{record['steps']} steps, {record['cell_seconds']:.0f} s in all")
    print_table(data, s.results)
    failed = [r for r in data["cells"] if r.get("rc") != 0 and r["cell"] in {c.name for c in chosen}
              and budget_of(r) in (None, budget)]
    if failed:
        raise SystemExit(1)


@app.command()
def finish(name: str = typer.Argument(..., help="the cell whose training ended but whose final evaluation did not"),
           seed: int = typer.Option(..., help="the run's seed"),
           generator: Path = typer.Option(..., help="the run's EMA generator: a kept first stage "
                                                    "(WORK/generators/CELL-sSEED-BUDGET/step_*.pt) or a run's "
                                                    "checkpoints/step_*.pt"),
           steps: int = typer.Option(..., help="the run's step budget: the checkpoint must be at this step"),
           jobs: int = typer.Option(1, help="how many cells shared the device while it trained"),
           compile_mode: str = typer.Option("off", help="the compile mode it trained with"),
           train_wall_s: Optional[float] = typer.Option(None, help="its training wall time, when known (its log)"),
           note: str = typer.Option("", help="why the cell is finished apart, recorded with it"),
           samples: int = typer.Option(10000, help="samples of the final classifier FD (and FID)"),
           inception_weights: Optional[Path] = typer.Option(None, help="Inception-v3 weights: also the FID"),
           work: Optional[Path] = typer.Option(None, help="work folder (runs/cifar_table)"),
           export: Optional[Path] = typer.Option(None, "--teacher", help="teacher export (WORK/teacher_export)"),
           classifier: Optional[Path] = typer.Option(None, help="FD classifier (WORK/fd_classifier.pt)"),
           results: Optional[Path] = typer.Option(None, help="results JSON (docs/results/cifar_table.json)"),
           smoke: bool = typer.Option(False, help="tiny evaluation on CPU (tests)"),
           device: str = "auto", precision: Optional[str] = None, batch: Optional[int] = None):
    """Record a distillation whose training ended but whose evaluation was cut off (a machine's call limit):
    evaluate its kept EMA generator here and append the record, marked with the generator it was finished from.

    The training settings recorded are those of ``cell``'s defaults (lr 1e-4, K = 5, warm-up 50) and the given
    budget; the record's ``finished_from`` and ``note`` say how it was made.
    """
    from realuid.checkpoints import load_checkpoint

    started = time.perf_counter()
    c = parse_cell(name)
    if c.is_teacher or c.second_stage:
        raise typer.BadParameter(f"{name} is not a first-stage distillation cell", param_hint="NAME")
    if not generator.is_file():
        raise typer.BadParameter(f"{generator} is not a file (give a checkpoint step_*.pt)", param_hint="--generator")
    check_compile_mode(compile_mode)
    if not 1 <= steps <= MAX_STEPS or jobs < 1 or samples < 2:
        raise typer.BadParameter(f"--steps {steps}, --jobs {jobs} or --samples {samples} is out of range",
                                 param_hint="--steps/--jobs/--samples")
    state = load_checkpoint(generator, map_location="cpu")
    if int(state.get("step", -1)) != steps:
        raise typer.BadParameter(f"{generator} is at step {state.get('step')}, not at the budget's {steps}: it is "
                                 "not the end of a run on this budget", param_hint="--generator")
    s = setup(smoke, work, export, classifier, results, device, precision, batch)
    samples = 64 if smoke else samples
    if not s.classifier.is_file() or not (s.teacher / "config.json").is_file():
        raise typer.BadParameter(f"the FD classifier {s.classifier} or the teacher export {s.teacher} is missing "
                                 "(the ones the other cells used)", param_hint="--classifier/--teacher")
    data = read_results(s.results)
    record = {"cell": c.name, "label": c.label, "seed": seed, "nfe": 1, "alpha": c.alpha, "beta": c.beta,
              "teacher": teacher_record(s.teacher), "device": device_name(s.device), "precision": s.precision,
              "batch": s.batch, "samples": samples, "smoke": smoke, "classifier": classifier_record(s.classifier),
              "jobs": jobs, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "budget": budget_name(steps, 0),
              "seconds": None, "steps_budget": steps, "lr": 1e-4, "fake_steps": 5, "warmup": 50,
              "compile_mode": compile_mode, "steps": steps, "train_wall_s": train_wall_s, "curve": [],
              "finished_from": str(generator), "note": note}
    if c.is_first_stage:
        record["generator"] = str(generator)
    phases = Phases(s.work / "logs" / f"{c.name}-s{seed}-finish.txt")
    evaluation = s.work / "eval" / f"{c.name}-s{seed}"
    evaluation.parent.mkdir(parents=True, exist_ok=True)
    record = evaluated(record, generator, evaluation, s, s.classifier, samples, seed, None, inception_weights,
                       phases, started)
    data["cells"] = [r for r in data["cells"] if record_key(r) != record_key(record)] + [record]
    write_results(s.results, data)
    if record["rc"] != 0:
        raise SystemExit(f"{name} seed {seed}: {record['error']}")
    console.print(f"{name} seed {seed}: classifier FD {record['fd_classifier']:.3f} (finished from {generator})")


@app.command("first-stage")
def first_stage(results: Path = typer.Option(ROOT / "docs/results/cifar_table.json", help="results JSON")):
    """Print the best first-stage RealUID cell of the results (nothing when there is none)."""
    best = best_first_stage(read_results(results))
    if best is not None:
        print(best[0])


# -- table and figure ----------------------------------------------------------------------------------------------
def spread(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation with ddof = 1; None for one value)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarise(data: dict, budget: str | None = None) -> list[dict]:
    """One row per cell (in the table's order, then others): mean and spread over its successful seeds on
    ``budget`` (default: :func:`current_budget`)."""
    by_cell: dict[str, list[dict]] = {}
    for r in sorted(done(data, budget=budget).values(), key=lambda r: r["seed"]):
        by_cell.setdefault(r["cell"], []).append(r)
    order = [c for c in CELLS if c in by_cell] + sorted(c for c in by_cell if c not in CELLS)
    rows = []
    for name in order:
        records = by_cell[name]
        row = {"cell": name, "label": records[0]["label"], "nfe": records[0]["nfe"],
               "seeds": [r["seed"] for r in records], "failed_seeds": sorted(
                   r["seed"] for r in data["cells"] if r["cell"] == name and r.get("rc") != 0
                   and budget_of(r) in (None, budget or current_budget(data)))}
        for key in ("fd_classifier", "precision_classifier", "recall_classifier", "fid", "steps", "train_wall_s",
                    "images_per_s"):
            row[key], row[key + "_std"] = spread([r.get(key) for r in records])
        row["first_stage"] = sorted({r["first_stage"] for r in records if r.get("first_stage")})
        rows.append(row)
    return rows


def fmt(mean, std, digits: int = 2) -> str:
    if mean is None:
        return "-"
    return f"{mean:,.{digits}f}" + (f" ± {std:,.{digits}f}" if std is not None else "")


def print_table(data: dict, path: Path, markdown: bool = False, budget: str | None = None) -> list[dict]:
    budget = budget or current_budget(data)
    rows = summarise(data, budget)
    columns = ("cell", "NFE", "seeds", "classifier FD", "FID", "precision", "recall", "steps", "train s")
    lines = [[r["cell"] + (f" (from {', '.join(r['first_stage'])})" if r["first_stage"] else ""), str(r["nfe"]),
              ",".join(map(str, r["seeds"])) + (f" (failed: {r['failed_seeds']})" if r["failed_seeds"] else ""),
              fmt(r["fd_classifier"], r["fd_classifier_std"], 3), fmt(r["fid"], r["fid_std"]),
              fmt(r["precision_classifier"], r["precision_classifier_std"], 3),
              fmt(r["recall_classifier"], r["recall_classifier_std"], 3), fmt(r["steps"], r["steps_std"], 0),
              fmt(r["train_wall_s"], r["train_wall_s_std"], 0)] for r in rows]
    if markdown:
        print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        table = Table(title=f"CIFAR-10 table so far ({path}), budget {budget} per distillation: mean ± sd over "
                            "seeds")
        for col in columns:
            table.add_column(col, justify="left" if col == "cell" else "right")
        for line in lines:
            table.add_row(*line)
        console.print(table)
    if markdown:
        print(f"\nBudget per distillation: {budget}.")
    others = sorted({budget_of(r) for r in data["cells"] if r.get("rc") == 0} - {None, budget})
    if others:
        console.print(f"other budgets in {path} (`table --budget B` shows one): {'; '.join(others)}")
    teachers = sorted({r["teacher"]["weights_sha256"] or "?" for r in done(data, budget=budget).values()})
    classifier = current_classifier(data)
    stale = [r for r in data["cells"] if r.get("rc") == 0 and classifier_of(r) != classifier]
    if stale:
        console.print(f"left out: {len(stale)} record(s) measured with another FD classifier than the newest record's "
                      f"({(classifier or '?')[:12]}): {', '.join(sorted({r['cell'] for r in stale}))}")
    jobs = sorted({r.get("jobs", 1) for r in done(data, budget=budget).values() if not parse_cell(r["cell"]).is_teacher})
    if len(jobs) > 1 and budget and budget.endswith(" s"):
        console.print(f"[yellow]warning[/]: the distillations shared the device with different numbers of runs "
                      f"({jobs}): their step counts are not one budget")
    if len(teachers) > 1:
        console.print(f"[yellow]warning[/]: the cells used {len(teachers)} different teacher exports")
    missing = [c for c in CELLS if c not in {r["cell"] for r in rows}]
    if missing:
        console.print(f"not run yet: {', '.join(missing)}")
    return rows


def plot(data: dict, path: Path, budget: str | None = None) -> bool:
    """FD against generator steps and against training wall time, every run of every cell, teachers as lines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print("matplotlib is not installed: no figure (the curves are in the JSON)")
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), constrained_layout=True)
    budget = budget or current_budget(data)
    records = sorted(done(data, budget=budget).values(), key=lambda r: (list(CELLS).index(r["cell"]) if r["cell"] in CELLS
                                                         else len(CELLS), r["seed"]))
    colours: dict[str, object] = {}
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r in records:
        colour = colours.setdefault(r["cell"], cycle[len(colours) % len(cycle)])
        label = r["label"] if sum(1 for x in records if x["cell"] == r["cell"] and x is not r
                                  and x["seed"] < r["seed"]) == 0 else None
        if r["nfe"] > 1 or r["cell"].startswith("teacher-"):
            for ax in axes:
                ax.axhline(r["fd_classifier"], color=colour, ls=":", lw=1, label=label)
            continue
        offset = r.get("offset") or {"steps": 0, "wall_time": 0.0}
        curve = r.get("curve") or []
        style = ["-", "--", "-.", ":"][r["seed"] % 4]
        for ax, key in zip(axes, ("step", "wall_time")):
            xs = [c[key] + offset["steps" if key == "step" else "wall_time"] for c in curve]
            ax.plot(xs, [c["fd"] for c in curve], style, color=colour, marker="o", ms=2, lw=1.2, label=label)
            x_end = (r["steps"] or 0) + offset["steps"] if key == "step" else (r["train_wall_s"] or 0) + \
                offset["wall_time"]
            ax.plot([x_end], [r["fd_classifier"]], marker="*", ms=9, color=colour)   # the final FD on --samples
    for ax, xlabel in zip(axes, ("generator steps", "training wall time (s)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("classifier FD")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"CIFAR-10, one teacher, {budget} per distillation: curves on the in-run samples, stars the "
                 "final FD, dotted lines the teacher (line style = seed)", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


@app.command()
def table(results: Path = typer.Option(ROOT / "docs/results/cifar_table.json", help="results JSON"),
          figure: Optional[Path] = typer.Option(None, help="the figure (default: beside --results, .png)"),
          markdown: bool = typer.Option(False, "--markdown", help="print a Markdown table"),
          budget: Optional[str] = typer.Option(None, help="the budget whose table to show, as the table prints it "
                                                          "(\"400 steps\", \"120 s\"; default: the newest record's)")):
    """Print the table so far (mean ± sd over seeds) and draw FD against steps and wall time."""
    if not results.is_file():
        raise typer.BadParameter(f"{results} does not exist: run `python tools/cifar_table.py cell ...` first",
                                 param_hint="--results")
    data = read_results(results)
    budgets = {budget_of(r) for r in data["cells"] if r.get("rc") == 0} - {None}
    if budget is not None and budget not in budgets:
        raise typer.BadParameter(f"no successful distillation in {results} has the budget {budget!r}; its budgets: "
                                 f"{', '.join(sorted(budgets)) or 'none'}", param_hint="--budget")
    print_table(data, results, markdown, budget)
    figure = figure or results.with_suffix(".png")
    if done(data, budget=budget) and plot(data, figure, budget):
        console.print(f"wrote {figure}")


if __name__ == "__main__":
    sys.exit(app())
