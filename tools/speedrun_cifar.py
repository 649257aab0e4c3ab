"""CIFAR-10 speedrun: train a flow-matching teacher from scratch and distil it into a one-step student.

Phases (each the real CLI command, timed): the FD classifier (evaluation
set-up, reused when ``--classifier`` exists, not counted in the training
time), the FM teacher (``gin/fm_cifar_teacher.gin``, ``--teacher-seconds``),
the classifier FD of the teacher at each NFE (Heun; NFE 1 is one Euler step),
the student (``gin/uid_fm_cifar.gin`` or ``gin/realuid_fm_cifar.gin``,
``--student-seconds``, generator and fake model initialised from the teacher)
and its classifier FD at NFE 1. Prints a table and the goal check (student FD
at NFE 1 <= teacher FD at NFE 100, teacher + student training <= 20 minutes),
writes ``OUT/speedrun.json``. It measures; it decides nothing.

    python tools/speedrun_cifar.py --teacher-seconds 240 --student-seconds 120   # on the GPU machine
    python tools/speedrun_cifar.py --smoke                                          # the logic, on CPU, ~2 min

Classifier FD is the Frechet distance in the features of a small CIFAR-10
classifier (``realuid.metrics.classifier_fd``), not the Inception FID: its numbers
are comparable with each other, not with published FIDs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.table import Table

from cifar_phases import (NEVER, SMALL_UNET, Phases, binds, ensure_classifier, evaluate, read_metrics, realuid,
                          training_binds, unet_name)

GOAL_MINUTES = 20.0


def main(teacher_seconds: float = typer.Option(240, help="teacher training time (s)"),
         student_seconds: float = typer.Option(120, help="distillation time (s)"),
         method: str = typer.Option("uid", help="uid or realuid"),
         alpha: float = typer.Option(0.94, help="RealUID alpha"), beta: float = typer.Option(0.96, help="RealUID beta"),
         teacher_lr: float = 5e-4, student_lr: float = 1e-4, fake_steps: int = 5, batch: int = 256,
         nfes: str = typer.Option("1,2,10,100", help="teacher NFEs to evaluate"),
         fd_samples: int = typer.Option(5000, help="samples per classifier-FD evaluation"),
         classifier: Path = typer.Option(Path("runs/fd_classifier.pt"), help="FD classifier (trained if missing)"),
         classifier_epochs: int = 8, paper_unet: bool = typer.Option(False, help="the 35.7M U-Net, not the 6.5M one"),
         compile: bool = typer.Option(False, help="torch.compile the networks"),
         precision: str = "bf16", smoke: bool = typer.Option(False, help="seconds-long phases on CPU (tests)"),
         out: Path = typer.Option(Path("runs/speedrun"), help="work folder: runs, evaluations, speedrun.json")):
    """Teacher from scratch, then a one-step student; classifier FD and wall time of each phase."""
    if method not in ("uid", "realuid"):
        raise typer.BadParameter("--method must be uid or realuid")
    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    if smoke:
        teacher_seconds, student_seconds, fd_samples, batch, precision = 4, 4, 64, 8, "fp32"
        nfes, classifier_epochs = "1,2", 1
        classifier = out / "fd_classifier_smoke.pt"
    out.mkdir(parents=True, exist_ok=True)
    phases = Phases(out / "log.txt")
    smoke_flags = ["--smoke"] if smoke else []
    unet = [] if paper_unet or smoke else list(SMALL_UNET)
    clf = ensure_classifier(phases, classifier, classifier_epochs, device, smoke)
    common = dict(device=device, precision=precision, batch=batch, cache=out / "cache", classifier=None,
                  compile_=compile, eval_samples=min(fd_samples, 1000))

    teacher_dir = out / "teacher"
    phases.run("teacher", realuid("run", "gin/fm_cifar_teacher.gin", *smoke_flags, "--out", str(teacher_dir),
                                  "--overwrite", "--no-progress",
                                  *binds(unet + training_binds("MatchingTrainer", seconds=teacher_seconds,
                                                               eval_every=NEVER, **common)),
                                  *binds([f"MatchingTrainer.lr = {teacher_lr}", "MatchingTrainer.warmup_steps = 200",
                                          "MatchingTrainer.ema_decay = 0.999", "MatchingTrainer.eval_nfe = 20"])))
    student_dir = out / method
    method_binds = [f"RealUID.alpha = {alpha}", f"RealUID.beta = {beta}"] if method == "realuid" else []
    phases.run("student", realuid("run", f"gin/{method}_fm_cifar.gin", *smoke_flags, "--out", str(student_dir),
                                  "--overwrite", "--no-progress",
                                  *binds(unet + training_binds("DistillationTrainer", seconds=student_seconds,
                                                               eval_every=NEVER, **common)),
                                  *binds([f"CheckpointTeacher.source = '{teacher_dir}'",
                                          f"DistillationTrainer.lr_generator = {student_lr}",
                                          f"DistillationTrainer.lr_fake = {student_lr}",
                                          "DistillationTrainer.warmup_steps = 50",
                                          f"DistillationTrainer.fake_steps = {fake_steps}", *method_binds])))

    fds: dict[str, dict] = {}
    if clf is not None:
        for nfe in [int(n) for n in nfes.split(",")]:
            fds[f"teacher_nfe{nfe}"] = evaluate(phases, f"teacher_nfe{nfe}", teacher_dir, clf, out / "eval",
                                                num=fd_samples, device=device, precision=precision, nfe=nfe,
                                                smoke=smoke)
        fds[f"{method}_nfe1"] = evaluate(phases, f"{method}_nfe1", student_dir, clf, out / "eval", num=fd_samples,
                                         device=device, precision=precision, smoke=smoke)

    def steps_of(run_dir: Path) -> int | None:
        rows = read_metrics(run_dir)
        return rows[-1]["step"] if rows else None

    train_s = (phases.seconds("teacher") or 0.0) + (phases.seconds("student") or 0.0)
    teacher_100 = (fds.get("teacher_nfe100") or {}).get("fd_classifier")
    student_1 = (fds.get(f"{method}_nfe1") or {}).get("fd_classifier")
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
        "settings": {"teacher_seconds": teacher_seconds, "student_seconds": student_seconds, "method": method,
                     "alpha": alpha, "beta": beta, "teacher_lr": teacher_lr, "student_lr": student_lr,
                     "fake_steps": fake_steps, "batch": batch, "fd_samples": fd_samples, "precision": precision,
                     "compile": compile, "unet": unet_name(smoke, paper_unet)},
        "phases": phases.records, "fd": fds,
        "steps": {"teacher": steps_of(teacher_dir), "student": steps_of(student_dir)},
        "goal": {"train_minutes": train_s / 60, "goal_minutes": GOAL_MINUTES, "teacher_fd_nfe100": teacher_100,
                 "student_fd_nfe1": student_1,
                 "met": None if teacher_100 is None or student_1 is None
                 else bool(student_1 <= teacher_100 and train_s / 60 <= GOAL_MINUTES)},
    }
    (out / "speedrun.json").write_text(json.dumps(result, indent=2) + "\n")

    table = Table(title=f"CIFAR-10 speedrun on {result['device']} ({result['settings']['unet']} U-Net)")
    for col in ("phase", "seconds", "steps", "classifier FD", "precision", "recall", "rc"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for r in phases.records:
        key = r["phase"].removeprefix("eval_")
        fd = fds.get(key) or {}
        steps = result["steps"].get(r["phase"])
        table.add_row(r["phase"], f"{r['seconds']:.1f}", "-" if steps is None else str(steps),
                      f"{fd['fd_classifier']:.2f}" if "fd_classifier" in fd else "-",
                      f"{fd['precision_classifier']:.3f}" if "precision_classifier" in fd else "-",
                      f"{fd['recall_classifier']:.3f}" if "recall_classifier" in fd else "-", str(r["rc"]))
    console = Console()
    console.print(table)
    g = result["goal"]
    console.print(f"training (teacher + student): {g['train_minutes']:.1f} min of the {GOAL_MINUTES:g}-minute goal; "
                  f"student FD at NFE 1 {student_1 if student_1 is None else f'{student_1:.2f}'} vs teacher FD at "
                  f"NFE 100 {teacher_100 if teacher_100 is None else f'{teacher_100:.2f}'}: goal met = {g['met']}")
    console.print(f"wrote {out / 'speedrun.json'}")


if __name__ == "__main__":
    typer.run(main)
