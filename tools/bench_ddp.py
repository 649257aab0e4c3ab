"""Data-parallel scaling: distillation images/s on 1 and N processes through torchrun.

Weak scaling: every process keeps the same per-process batch (``--per-gpu-batch``),
so N processes train on a global batch N times larger. Each setting is a real
``torchrun --standalone --nproc_per_node N -m realuid run RECIPE`` of
``--steps`` generator steps; images/s come from the run's own
``metrics.jsonl`` (steps between the first and the last evaluation over the
training wall time between them, so start-up, data decoding and compilation
stay out) times the global batch times K + 1 updates per step. Scaling
efficiency = images/s(N) / (N x images/s(1)) (goal >= 90% on 2 GPUs). Prints
a table, writes JSON.

    python tools/bench_ddp.py --procs 1,2                      # on nvidia-h200-x2
    python tools/bench_ddp.py --smoke                           # the logic on CPU (gloo, 2 processes)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.table import Table

from cifar_phases import SMALL_UNET, Phases, binds, read_metrics


def images_per_second(rows: list[dict], global_batch: int, updates_per_step: int) -> float | None:
    """Throughput between the first and the last evaluation row (the warm part of the run)."""
    if len(rows) < 2 or rows[-1]["wall_time"] <= rows[0]["wall_time"]:
        return None
    steps = rows[-1]["step"] - rows[0]["step"]
    return steps * global_batch * updates_per_step / (rows[-1]["wall_time"] - rows[0]["wall_time"])


def main(procs: str = typer.Option("1,2", help="process counts to compare (the first is the baseline)"),
         recipe: str = "gin/uid_fm_cifar.gin", steps: int = 60, eval_every: int = 10,
         per_gpu_batch: int = 256, fake_steps: int = 5, precision: str = "bf16",
         paper_unet: bool = typer.Option(False, help="the 35.7M U-Net, not the 6.5M one"),
         smoke: bool = typer.Option(False, help="a GMM recipe on CPU with gloo (tests)"),
         out: Path = typer.Option(Path("runs/bench_ddp"), help="work folder: runs and bench_ddp.json")):
    """Images/s of the same distillation on 1 and N processes; scaling efficiency."""
    counts = [int(n) for n in procs.split(",")]
    cuda = torch.cuda.is_available() and not smoke
    if cuda and max(counts) > torch.cuda.device_count():
        raise SystemExit(f"--procs asks for {max(counts)} processes but {torch.cuda.device_count()} GPU(s) are visible")
    out.mkdir(parents=True, exist_ok=True)
    phases = Phases(out / "log.txt")
    if smoke:
        recipe, steps, eval_every, per_gpu_batch, precision = "gin/uid_fm_gmm.gin", 20, 5, 64, "fp32"
    settings = [f"TrainingLoop.steps = {steps}", f"TrainingLoop.eval_every = {eval_every}",
                f"TrainingLoop.checkpoint_every = {steps}", f"TrainingLoop.precision = '{precision}'",
                "TrainingLoop.eval_samples = 64", f"DistillationTrainer.fake_steps = {fake_steps}",
                "DistillationTrainer.metrics = []"]
    if not smoke:
        settings += ["CheckpointTeacher.allow_random_init = True"] + ([] if paper_unet else list(SMALL_UNET))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = []
    for n in counts:
        folder = out / f"procs{n}"
        ok = phases.run(f"procs{n}", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                      "--nproc_per_node", str(n), "-m", "realuid", "run", recipe, "--out",
                                      str(folder), "--overwrite", "--no-progress",
                                      *binds(settings + [f"TrainingLoop.batch_size = {per_gpu_batch * n}"])], env=env)
        rate = images_per_second(read_metrics(folder), per_gpu_batch * n, fake_steps + 1) if ok else None
        results.append({"procs": n, "global_batch": per_gpu_batch * n, "images_per_s": rate, "rc": 0 if ok else 1,
                        "command": phases.records[-1]["command"]})
    base = results[0]["images_per_s"]
    for r in results:
        r["efficiency"] = (r["images_per_s"] / (r["procs"] / results[0]["procs"] * base)
                           if base and r["images_per_s"] else None)
    device = torch.cuda.get_device_name() if cuda else "cpu (gloo)"
    (out / "bench_ddp.json").write_text(json.dumps({"device": device, "recipe": recipe, "steps": steps,
                                                    "per_gpu_batch": per_gpu_batch, "precision": precision,
                                                    "results": results}, indent=2) + "\n")
    table = Table(title=f"data-parallel scaling on {device}: {recipe}, {per_gpu_batch} per process")
    for col in ("processes", "global batch", "images/s", "efficiency", "rc"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(str(r["procs"]), str(r["global_batch"]),
                      "-" if r["images_per_s"] is None else f"{r['images_per_s']:.0f}",
                      "-" if r["efficiency"] is None else f"{100 * r['efficiency']:.1f}%", str(r["rc"]))
    Console().print(table)
    Console().print(f"wrote {out / 'bench_ddp.json'}")


if __name__ == "__main__":
    typer.run(main)
