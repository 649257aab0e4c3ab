"""UID against RealUID on CIFAR-10: classifier FD against steps and wall time from one teacher and seed.

Every run distils the same teacher (``--teacher``, a run folder; trained first
for ``--teacher-seconds`` when it does not exist) with the same seed, batch,
learning rates and time budget, changing only (alpha, beta): UID is
(1, 1), RealUID the ``--grid`` points (default around the paper's best,
Table 1: (0.94, 0.96) for unconditional CIFAR-10). Each run evaluates the
classifier FD of ``--eval-samples`` fixed-noise EMA samples every
``--eval-every`` generator steps (``realuid.metrics.classifier_fd.ClassifierFD``).

Reported per run: final FD, best FD, steps and images/s; and for each RealUID
run the first evaluated step at which its FD is at or below UID's final FD,
and the ratio of UID's first such step to it (UID is timed by the same rule; the
paper reports about 3x faster convergence). Writes ``OUT/convergence.json`` and ``OUT/convergence.png`` (FD
against steps and against wall time; matplotlib, skipped with a message when
it is not installed). It measures; it decides nothing.

    python tools/convergence_cifar.py --teacher runs/speedrun/teacher --seconds 150   # on the GPU machine
    python tools/convergence_cifar.py --smoke                                           # the logic, on CPU
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.table import Table

from cifar_phases import (NEVER, SMALL_UNET, Phases, binds, ensure_classifier, read_metrics, realuid, training_binds,
                          unet_name)


def parse_grid(text: str) -> list[tuple[float, float]]:
    """'0.94:0.96,0.92:0.94' -> [(0.94, 0.96), (0.92, 0.94)]."""
    points = []
    for item in filter(None, text.split(",")):
        try:
            alpha, beta = (float(v) for v in item.split(":"))
        except ValueError:
            raise typer.BadParameter(f"grid point {item!r} is not ALPHA:BETA (e.g. 0.94:0.96)") from None
        points.append((alpha, beta))
    return points


def steps_to_reach(curve: list[dict], target: float) -> int | None:
    """The first evaluated step whose FD is at or below ``target``."""
    return next((r["step"] for r in curve if r["fd"] <= target), None)


def add_speedups(runs: dict[str, dict]) -> None:
    """Each run's first step at or below UID's final FD, and UID's such step over it.

    Every run, UID included, is timed to the same target by the same rule, so
    the noise of single evaluations biases no run against another.
    """
    target = runs["UID"]["final_fd"]
    for run in runs.values():
        run["steps_to_uid_final_fd"] = None if target is None else steps_to_reach(run["curve"], target)
    uid_reached = runs["UID"]["steps_to_uid_final_fd"]
    for run in runs.values():
        reached = run["steps_to_uid_final_fd"]
        run["speedup_in_steps"] = uid_reached / reached if reached and uid_reached else None


def plot(runs: dict[str, dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        Console().print("matplotlib is not installed: no PNG (the curves are in the JSON)")
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for name, run in runs.items():
        steps = [r["step"] for r in run["curve"]]
        axes[0].plot(steps, [r["fd"] for r in run["curve"]], marker="o", ms=3, label=name)
        axes[1].plot([r["wall_time"] for r in run["curve"]], [r["fd"] for r in run["curve"]], marker="o", ms=3,
                     label=name)
    for ax, xlabel in zip(axes, ("generator steps", "training wall time (s)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("classifier FD")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("UID vs RealUID on CIFAR-10 (same teacher, seed, batch, time budget)")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(teacher: Path = typer.Option(Path("runs/speedrun/teacher"), help="teacher run folder (trained if missing)"),
         teacher_seconds: float = typer.Option(200, help="teacher training time when --teacher does not exist"),
         seconds: float = typer.Option(150, help="distillation time of each run (s)"),
         grid: str = typer.Option("0.94:0.96,0.92:0.94", help="RealUID (alpha:beta) points, comma-separated"),
         eval_every: int = typer.Option(25, help="generator steps between FD evaluations"),
         eval_samples: int = typer.Option(2000, help="samples per in-run FD evaluation"),
         lr: float = 1e-4, fake_steps: int = 5, batch: int = 256, seed: int = 0,
         classifier: Path = typer.Option(Path("runs/fd_classifier.pt"), help="FD classifier (trained if missing)"),
         classifier_epochs: int = 8, paper_unet: bool = typer.Option(False, help="the 35.7M U-Net, not the 6.5M one"),
         compile: bool = False, precision: str = "bf16",
         smoke: bool = typer.Option(False, help="seconds-long runs on CPU (tests)"),
         out: Path = typer.Option(Path("runs/convergence"), help="work folder: runs, convergence.json, PNG")):
    """UID and RealUID from one teacher: classifier FD against steps and wall time."""
    points = parse_grid(grid)
    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    if smoke:
        teacher_seconds, seconds, eval_every, eval_samples, batch, precision = 8, 10, 2, 64, 8, "fp32"
        classifier_epochs, classifier = 1, out / "fd_classifier_smoke.pt"
    out.mkdir(parents=True, exist_ok=True)
    phases = Phases(out / "log.txt")
    smoke_flags = ["--smoke"] if smoke else []
    unet = [] if paper_unet or smoke else list(SMALL_UNET)
    clf = ensure_classifier(phases, classifier, classifier_epochs, device, smoke)
    if clf is None:
        raise SystemExit(f"no FD classifier at {classifier} and training one failed (see {phases.log})")
    smoke_reference = ["ClassifierFD.reference_limit = 256", "ClassifierFD.pr_reference_size = 256"] if smoke else []
    common = dict(device=device, precision=precision, batch=batch, cache=out / "cache", classifier=clf,
                  compile_=compile, eval_samples=eval_samples)
    if not (teacher / "run.json").is_file():
        phases.run("teacher", realuid("run", "gin/fm_cifar_teacher.gin", *smoke_flags, "--out", str(teacher),
                                      "--overwrite", "--no-progress",
                                      *binds(unet + training_binds("MatchingTrainer", seconds=teacher_seconds,
                                                                   eval_every=NEVER,
                                                                   **{**common, "classifier": None}))))

    runs: dict[str, dict] = {}
    for alpha, beta in [(1.0, 1.0), *points]:
        name = "UID" if (alpha, beta) == (1.0, 1.0) else f"RealUID({alpha:g}, {beta:g})"
        folder = out / ("uid" if alpha == 1.0 else f"realuid_{alpha:g}_{beta:g}")
        recipe = "gin/uid_fm_cifar.gin" if alpha == 1.0 else "gin/realuid_fm_cifar.gin"
        method = [] if alpha == 1.0 else [f"RealUID.alpha = {alpha}", f"RealUID.beta = {beta}"]
        ok = phases.run(name, realuid("run", recipe, *smoke_flags, "--out", str(folder), "--overwrite",
                                      "--no-progress", "--seed", str(seed),
                                      *binds(unet + training_binds("DistillationTrainer", seconds=seconds,
                                                                   eval_every=eval_every, **common)),
                                      *binds([f"CheckpointTeacher.source = '{teacher}'",
                                              f"DistillationTrainer.lr_generator = {lr}",
                                              f"DistillationTrainer.lr_fake = {lr}",
                                              "DistillationTrainer.warmup_steps = 50",
                                              f"DistillationTrainer.fake_steps = {fake_steps}",
                                              *smoke_reference, *method])))
        rows = [r for r in read_metrics(folder) if "fd_classifier" in r]
        curve = [{"step": r["step"], "wall_time": r["wall_time"], "fd": r["fd_classifier"]} for r in rows]
        runs[name] = {"alpha": alpha, "beta": beta, "rc": 0 if ok else 1, "folder": str(folder), "curve": curve,
                      "command": phases.records[-1]["command"],
                      "final_fd": curve[-1]["fd"] if curve else None, "best_fd": min((c["fd"] for c in curve),
                                                                                     default=None),
                      "steps": curve[-1]["step"] if curve else None,
                      "steps_per_s": curve[-1]["step"] / curve[-1]["wall_time"] if curve else None}

    add_speedups(runs)

    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "settings": {"teacher": str(teacher), "seconds": seconds, "eval_every": eval_every,
                           "eval_samples": eval_samples, "lr": lr, "fake_steps": fake_steps, "batch": batch,
                           "seed": seed, "precision": precision, "compile": compile,
                           "unet": unet_name(smoke, paper_unet)},
              "phases": phases.records, "runs": runs}
    (out / "convergence.json").write_text(json.dumps(result, indent=2) + "\n")
    plotted = plot(runs, out / "convergence.png")

    table = Table(title=f"UID vs RealUID on {result['device']}: {seconds:g} s each, FD every {eval_every} steps "
                        f"on {eval_samples} samples")
    for col in ("run", "steps", "steps/s", "final FD", "best FD", "steps to UID's final FD", "speed-up (steps)"):
        table.add_column(col, justify="left" if col == "run" else "right")

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    for name, run in runs.items():
        table.add_row(name, num(run["steps"], "d"), num(run["steps_per_s"], ".2f"), num(run["final_fd"], ".2f"),
                      num(run["best_fd"], ".2f"), num(run["steps_to_uid_final_fd"], "d"),
                      num(run["speedup_in_steps"], ".2f"))
    Console().print(table)
    Console().print(f"wrote {out / 'convergence.json'}" + (f" and {out / 'convergence.png'}" if plotted else ""))


if __name__ == "__main__":
    typer.run(main)
