"""Does the compiled training step (``TrainingLoop.compile``, any mode, CUDA graphs too) train like the plain one?

Builds one recipe twice from the same seed, eager and compiled, runs ``--steps``
training steps in each (K fake-model updates and one generator update a step),
and compares, step by step, every logged loss, and at the end how far each
network moved: for the weights ``w`` of each network (generator, fake model, an
objective's heads such as a GAN discriminator)

    moved   = ||w_N - w_0||                       (eager run)
    differs = ||w_N(compiled) - w_N(eager)|| / moved

``differs`` is near 0 when the compiled step computes the plain step's updates
(rounding, and Adam's sign-like first steps, keep it above 0 in float32 or
bfloat16), and near 1 or above when a network does not train, or trains on other
numbers, under compilation: a network the step leaves unchanged has ``moved`` 0
and is listed as such. The CPU test ``tests/engine/test_compiled_step.py`` checks
the same in float64 to 1e-9; this tool is its counterpart on the GPU, where CUDA
graphs (``compile_mode = 'reduce-overhead'``) exist.

    python tools/compare_compiled_step.py gin/uid_gan_fm_cifar.gin --device cuda --precision bf16 \\
        --mode reduce-overhead --steps 4 -b "CheckpointTeacher.source = 'docs/results/cifar_table_kept/teacher_export'"

Prints a table and writes JSON (``--json``). Exit 1 when a network's ``differs`` exceeds ``--tolerance``.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import torch
import typer
from rich.console import Console
from rich.table import Table

from realuid.devices import COMPILE_MODES
from realuid.engine.runner import build

console = Console()
app = typer.Typer(add_completion=False)


def weights(trainer) -> dict[str, dict[str, torch.Tensor]]:
    """A copy of every weight of the generator, the fake model and the objective's heads, by network."""
    networks = {"generator": trainer.generator, "fake": trainer.fake,
                **{f"head{i}" if len(trainer.objective_modules) > 1 else "head": m
                   for i, m in enumerate(trainer.objective_modules)}}
    return {role: {name.replace("_orig_mod.", ""): p.detach().float().clone() for name, p in m.named_parameters()}
            for role, m in networks.items()}


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((a[k] - b[k]).double().pow(2).sum()) for k in a))


def train(recipe: str, binds: list[str], steps: int, seed: int, folder: Path) -> tuple[list[dict], dict, dict]:
    """(logs of each step, weights before, weights after) of ``steps`` training steps of a freshly built run."""
    loop, _ = build(recipe, binds, out=folder, seed=seed, progress=False)
    trainer = loop.trainer
    before = weights(trainer)
    logs = []
    for _ in range(steps):
        logs.append({k: float(v) for k, v in trainer.train_step().items()})
    after = weights(trainer)
    torch._dynamo.reset()   # the next build compiles afresh
    return logs, before, after


@app.command()
def main(recipe: str = typer.Argument(..., help="recipe .gin file"),
         bind: List[str] = typer.Option([], "-b", "--bind", help="extra gin bindings (repeatable)"),
         mode: str = typer.Option("reduce-overhead", help="torch.compile mode of the compiled run: "
                                                          + ", ".join(COMPILE_MODES)),
         steps: int = typer.Option(4, help="training steps in each run (each K fake-model updates + 1 generator)"),
         seed: int = typer.Option(0, help="seed of both runs"),
         device: str = typer.Option("cuda", help="device of both runs"),
         precision: str = typer.Option("fp32", help="fp32 or bf16 (autocast), both runs"),
         tolerance: float = typer.Option(0.2, help="largest accepted 'differs' of a network"),
         json_out: Optional[Path] = typer.Option(None, "--json", help="write the comparison here")):
    if mode not in COMPILE_MODES:
        raise typer.BadParameter(f"{mode!r} is not one of {', '.join(COMPILE_MODES)}", param_hint="--mode")
    if not 1 <= steps <= 1000:
        raise typer.BadParameter(f"--steps {steps} is not in 1..1000", param_hint="--steps")
    if not 0 < tolerance:
        raise typer.BadParameter(f"--tolerance {tolerance} is not above 0", param_hint="--tolerance")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise typer.BadParameter("no CUDA device here: pass --device cpu (no CUDA graphs there)", param_hint="--device")
    common = [*bind, f"TrainingLoop.device = '{device}'", f"TrainingLoop.precision = '{precision}'",
              "TrainingLoop.tensorboard = False"]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("eager", ["TrainingLoop.compile = False"]),
                            ("compiled", ["TrainingLoop.compile = True", f"TrainingLoop.compile_mode = '{mode}'"])):
            began = time.perf_counter()
            runs[name] = train(recipe, common + extra, steps, seed, Path(tmp) / name)
            console.print(f"{name}: {steps} steps in {time.perf_counter() - began:.1f} s (compilation included)")
    (eager_logs, start, eager_end), (compiled_logs, compiled_start, compiled_end) = runs["eager"], runs["compiled"]
    networks = []
    for role in start:
        moved = distance(eager_end[role], start[role])
        networks.append({"network": role, "start_differs": distance(compiled_start[role], start[role]),
                         "moved": moved, "compiled_moved": distance(compiled_end[role], compiled_start[role]),
                         "differs": distance(compiled_end[role], eager_end[role]) / moved if moved > 0 else None})
    keys = sorted({k for row in eager_logs for k in row} & {k for row in compiled_logs for k in row})
    losses = [{"step": i + 1, **{k: [e.get(k), c.get(k)] for k in keys}}
              for i, (e, c) in enumerate(zip(eager_logs, compiled_logs))]

    table = Table(title=f"{recipe}: eager vs compiled ({mode}), {steps} steps, {precision} on {device}")
    for column in ("network", "moved (eager)", "moved (compiled)", "differs"):
        table.add_column(column, justify="right")
    for row in networks:
        table.add_row(row["network"], f"{row['moved']:.4g}", f"{row['compiled_moved']:.4g}",
                      "unchanged by the step" if row["differs"] is None else f"{row['differs']:.3g}")
    console.print(table)
    logs = Table(title="logged values, eager / compiled")
    logs.add_column("step")
    for k in keys:
        logs.add_column(k, justify="right")
    for row in losses:
        logs.add_row(str(row["step"]), *(f"{row[k][0]:.4g} / {row[k][1]:.4g}" for k in keys))
    console.print(logs)
    bad = [r["network"] for r in networks if r["differs"] is not None and r["differs"] > tolerance]
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"recipe": recipe, "binds": bind, "mode": mode, "steps": steps, "seed": seed,
                                        "device": torch.cuda.get_device_name() if device.startswith("cuda")
                                        else device, "precision": precision, "torch": torch.__version__,
                                        "tolerance": tolerance, "networks": networks, "losses": losses,
                                        "differ": bad}, indent=1))
        console.print(f"wrote {json_out}")
    if bad:
        console.print(f"[red]compiled training differs from eager for {', '.join(bad)}[/] (differs > {tolerance})")
        raise SystemExit(1)
    console.print(f"compiled training follows eager: every network within differs <= {tolerance}")


if __name__ == "__main__":
    sys.exit(app())
