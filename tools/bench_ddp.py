"""Data-parallel scaling: distillation images/s on 1 and N processes through torchrun, DDP and FSDP2.

Weak scaling: every process keeps the same per-process batch (``--per-gpu-batch``),
so N processes train on a global batch N times larger. Each setting is a real
``torchrun --standalone --nproc_per_node N -m realuid run RECIPE`` of
``--steps`` generator steps with ``TrainingLoop.parallel`` = ``ddp`` or ``fsdp``;
images/s come from the run's own ``metrics.jsonl`` (steps between the first and
the last evaluation over the training wall time between them, so start-up, data
decoding and compilation stay out) times the global batch times K + 1 updates
per step. Scaling efficiency = images/s(N) / (N x images/s(1)) (goal >= 90% on
2 GPUs).

**Communication not hidden behind compute.** For each N the tool also starts N
*independent* single-process runs at the same time, each at the per-process
batch (one per GPU on CUDA, sharing the cores exactly as the ranks do on CPU):
the same compute on the same hardware with no communication at all. The
exposed communication per generator step is then

    t_exposed = t_step(torchrun N) - mean_i t_step(independent run i)

and its share of the step is ``t_exposed / t_step(torchrun N)``; with perfect
overlap it is zero. Prints a table, writes JSON.

    python tools/bench_ddp.py --procs 1,2                      # on nvidia-h200-x2
    python tools/bench_ddp.py --smoke                           # the logic on CPU (gloo, 2 processes)
    python tools/bench_ddp.py --cpu-unet                        # a small U-Net on CIFAR-10, CPU (gloo)
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

MODES = ("ddp", "fsdp")

#: a U-Net small enough for CPU processes (~0.25M weights), on the first 512 CIFAR-10 images, untrained teacher
CPU_UNET = ("UNet.model_channels = 16", "UNet.channel_mult = (1, 2)", "UNet.num_res_blocks = 1",
            "UNet.attn_resolutions = ()", "UNet.head_channels = None", "UNet.dropout = 0.0", "CIFAR10Shards.limit = 512",
            "CIFAR10Shards.num_workers = 1", "TrainingLoop.device = 'cpu'",
            "CheckpointTeacher.allow_random_init = True")


def images_per_second(rows: list[dict], global_batch: int, updates_per_step: int) -> float | None:
    """Throughput between the first and the last evaluation row (the warm part of the run)."""
    if len(rows) < 2 or rows[-1]["wall_time"] <= rows[0]["wall_time"]:
        return None
    steps = rows[-1]["step"] - rows[0]["step"]
    return steps * global_batch * updates_per_step / (rows[-1]["wall_time"] - rows[0]["wall_time"])


def step_seconds(rate: float | None, global_batch: int, updates_per_step: int) -> float | None:
    """Seconds per generator step (K + 1 updates) at ``rate`` images/s."""
    return None if not rate else global_batch * updates_per_step / rate


def exposed_communication(t_parallel: float | None, t_alone: list[float | None]) -> float | None:
    """Seconds per step that communication adds to the same compute (module docstring); None if unmeasured."""
    if t_parallel is None or not t_alone or any(t is None for t in t_alone):
        return None
    return t_parallel - sum(t_alone) / len(t_alone)


def main(procs: str = typer.Option("1,2", help="process counts to compare (the first is the baseline)"),
         modes: str = typer.Option("ddp,fsdp", help="how gradients are shared: ddp, fsdp or both"),
         recipe: str = "gin/uid_fm_cifar.gin", steps: int = 60, eval_every: int = 10,
         per_gpu_batch: int = 256, fake_steps: int = 5, precision: str = "bf16",
         paper_unet: bool = typer.Option(False, help="the 35.7M U-Net, not the 6.5M one"),
         smoke: bool = typer.Option(False, help="a GMM recipe on CPU with gloo (tests)"),
         cpu_unet: bool = typer.Option(False, help="a small U-Net on CIFAR-10, on CPU with gloo"),
         out: Path = typer.Option(Path("runs/bench_ddp"), help="work folder: runs and bench_ddp.json")):
    """Images/s of the same distillation on 1 and N processes, DDP and FSDP; scaling efficiency and the
    communication not hidden behind compute."""
    try:
        counts = [int(n) for n in procs.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{procs!r} is not a comma-separated list of process counts, e.g. 1,2",
                                 param_hint="--procs") from None
    if not counts or min(counts) < 1:
        raise typer.BadParameter("process counts must be positive integers, e.g. 1,2", param_hint="--procs")
    chosen = [m.strip() for m in modes.split(",") if m.strip()]
    if not chosen or any(m not in MODES for m in chosen):
        raise typer.BadParameter(f"{modes!r}: use ddp, fsdp or ddp,fsdp", param_hint="--modes")
    if smoke and cpu_unet:
        raise typer.BadParameter("choose one of --smoke and --cpu-unet", param_hint="--smoke/--cpu-unet")
    cuda = torch.cuda.is_available() and not (smoke or cpu_unet)
    if cuda and max(counts) > torch.cuda.device_count():
        raise SystemExit(f"--procs asks for {max(counts)} processes but {torch.cuda.device_count()} GPU(s) are visible")
    out.mkdir(parents=True, exist_ok=True)
    phases = Phases(out / "log.txt")
    if smoke:
        recipe, steps, eval_every, per_gpu_batch, precision = "gin/uid_fm_gmm.gin", 20, 5, 64, "fp32"
    if cpu_unet:
        steps, eval_every, per_gpu_batch, precision = 12, 4, 16, "fp32"
    settings = [f"TrainingLoop.steps = {steps}", f"TrainingLoop.eval_every = {eval_every}",
                f"TrainingLoop.checkpoint_every = {steps}", f"TrainingLoop.precision = '{precision}'",
                "TrainingLoop.eval_samples = 64", f"DistillationTrainer.fake_steps = {fake_steps}",
                "DistillationTrainer.metrics = []", "TrainingLoop.tensorboard = False"]
    if cpu_unet:
        settings += list(CPU_UNET)
    elif not smoke:
        settings += ["CheckpointTeacher.allow_random_init = True"] + ([] if paper_unet else list(SMALL_UNET))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    updates = fake_steps + 1

    def realuid_run(folder: Path, batch: int, extra=()) -> list[str]:
        return ["-m", "realuid", "run", recipe, "--out", str(folder), "--overwrite", "--no-progress",
                *binds(settings + [f"TrainingLoop.batch_size = {batch}", *extra])]

    results = []
    for n in counts:
        alone_steps = None
        if n > 1:   # the same compute on the same hardware, without any communication
            folders = [out / f"alone{n}" / f"process{i}" for i in range(n)]
            envs = [{**env, "CUDA_VISIBLE_DEVICES": str(i)} if cuda else env for i in range(n)]
            oks = phases.run_together(f"alone{n}", [[sys.executable, *realuid_run(f, per_gpu_batch)]
                                                    for f in folders], envs)
            alone_steps = [step_seconds(images_per_second(read_metrics(f), per_gpu_batch, updates), per_gpu_batch,
                                        updates) if ok else None for f, ok in zip(folders, oks)]
        for mode in (chosen if n > 1 else ["single"]):
            folder = out / f"procs{n}_{mode}"
            extra = [] if n == 1 else [f"TrainingLoop.parallel = '{mode}'"]
            ok = phases.run(f"procs{n}_{mode}", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                 "--nproc_per_node", str(n),
                                                 *realuid_run(folder, per_gpu_batch * n, extra)], env=env)
            rate = images_per_second(read_metrics(folder), per_gpu_batch * n, updates) if ok else None
            t_step = step_seconds(rate, per_gpu_batch * n, updates)
            exposed = exposed_communication(t_step, alone_steps) if n > 1 else 0.0
            results.append({"procs": n, "mode": mode, "global_batch": per_gpu_batch * n, "images_per_s": rate,
                            "step_s": t_step, "alone_step_s": alone_steps, "exposed_comm_s": exposed,
                            "exposed_share": exposed / t_step if exposed is not None and t_step else None,
                            "rc": 0 if ok else 1, "command": phases.records[-1]["command"]})
    base = results[0]["images_per_s"]
    for r in results:
        r["efficiency"] = (r["images_per_s"] / (r["procs"] / results[0]["procs"] * base)
                           if base and r["images_per_s"] else None)
    device = torch.cuda.get_device_name() if cuda else "cpu (gloo)"
    (out / "bench_ddp.json").write_text(json.dumps({"device": device, "recipe": recipe, "steps": steps,
                                                    "per_gpu_batch": per_gpu_batch, "precision": precision,
                                                    "results": results, "phases": phases.records}, indent=2) + "\n")
    table = Table(title=f"data-parallel scaling on {device}: {recipe}, {per_gpu_batch} per process")
    for col in ("processes", "mode", "global batch", "images/s", "efficiency", "ms/step", "ms/step alone",
                "exposed comm.", "rc"):
        table.add_column(col, justify="right")
    for r in results:
        alone = r["alone_step_s"]
        table.add_row(str(r["procs"]), r["mode"], str(r["global_batch"]),
                      "-" if r["images_per_s"] is None else f"{r['images_per_s']:.0f}",
                      "-" if r["efficiency"] is None else f"{100 * r['efficiency']:.1f}%",
                      "-" if r["step_s"] is None else f"{1000 * r['step_s']:.1f}",
                      "-" if not alone or None in alone else "/".join(f"{1000 * t:.1f}" for t in alone),
                      "-" if r["exposed_share"] is None else
                      f"{1000 * r['exposed_comm_s']:.1f} ms ({100 * r['exposed_share']:.0f}%)", str(r["rc"]))
    Console().print(table)
    Console().print(f"wrote {out / 'bench_ddp.json'}")
    if any(r["rc"] for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    typer.run(main)
