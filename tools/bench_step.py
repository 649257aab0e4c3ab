"""Benchmark: time, throughput, memory and MFU of each kind of training step on images.

Builds the image recipe (default ``gin/realuid_fm_cifar.gin``: the paper's
36.8M U-Net, batch 256, K = 5) through the normal runner and times the
engine's own step functions — a teacher-training (matching) step, a fake-model
step, a generator step and a full distillation cycle (K fake steps + one
generator step) — for every precision x compile setting asked for. FLOPs per
step come from ``torch.utils.flop_counter.FlopCounterMode``; MFU divides the
achieved FLOP/s by the GPU's dense peak for that precision. Prints a table and
writes JSON.

    python tools/bench_step.py --precision fp32 --precision bf16 --compile off --compile on \
        --out runs/bench_step.json
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from realuid.engine.runner import build

# dense peak FLOP/s (no sparsity) by device name fragment: (bf16, tf32 used for fp32 matmuls)
PEAKS = {"H100": (989.4e12, 494.7e12), "H200": (989.4e12, 494.7e12), "A100": (312e12, 156e12)}


def peak_flops(precision: str) -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, (bf16, tf32) in PEAKS.items():
        if key in name:
            return bf16 if precision == "bf16" else tf32
    return None


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, warmup: int, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def bench_setting(recipe: str, teacher_recipe: str, precision: str, compile_: bool, binds: list[str],
                  warmup: int, repeats: int) -> dict:
    extra = [f"DistillationTrainer.precision = '{precision}'", f"DistillationTrainer.compile = {compile_}", *binds]
    with tempfile.TemporaryDirectory() as tmp:
        trainer, _ = build(recipe, extra, out=Path(tmp) / "d", progress=False)
        teacher_trainer, _ = build(teacher_recipe, [f"MatchingTrainer.precision = '{precision}'",
                                                    f"MatchingTrainer.compile = {compile_}", *binds],
                                   out=Path(tmp) / "t", progress=False)
        k, batch = trainer.fake_steps, trainer.batch_size
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        kinds = {
            "teacher step": (teacher_trainer.train_step, 1),
            "fake step": (trainer.fake_step, 1),
            "generator step": (trainer.generator_step, 1),
            f"cycle (K={k})": (trainer.train_step, k + 1),
        }
        rows = {}
        for name, (fn, updates) in kinds.items():
            seconds = timed(fn, warmup, repeats)
            flops = count_flops(fn)
            peak = peak_flops(precision)
            rows[name] = {
                "ms": seconds * 1e3, "images_per_s": batch * updates / seconds, "gflop": flops / 1e9,
                "tflops_per_s": flops / seconds / 1e12, "mfu": None if peak is None else flops / seconds / peak,
            }
        peak_mem = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"precision": precision, "compile": compile_, "batch_size": batch, "peak_memory_gib": peak_mem,
            "steps": rows}


def main(recipe: str = "gin/realuid_fm_cifar.gin", teacher_recipe: str = "gin/fm_cifar_teacher.gin",
         precision: list[str] = typer.Option(["bf16"], "--precision"),
         compile: list[str] = typer.Option(["off"], "--compile", help="off and/or on"),
         bind: list[str] = typer.Option([], "--bind", "-b"), warmup: int = 3, repeats: int = 10,
         out: Path = Path("runs/bench_step.json")):
    """Time every step kind for every precision x compile setting."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    results = {"device": device, "torch": torch.__version__, "recipe": recipe, "settings": []}
    for p in precision:
        for c in compile:
            results["settings"].append(bench_setting(recipe, teacher_recipe, p, c == "on", bind, warmup, repeats))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2) + "\n")

    table = Table(title=f"step benchmark on {device} ({recipe})")
    for col in ("precision", "compile", "step", "ms", "img/s", "GFLOP", "TFLOP/s", "MFU", "peak GiB"):
        table.add_column(col, justify="right")
    for s in results["settings"]:
        for name, r in s["steps"].items():
            table.add_row(s["precision"], "on" if s["compile"] else "off", name, f"{r['ms']:.1f}",
                          f"{r['images_per_s']:.0f}", f"{r['gflop']:.0f}", f"{r['tflops_per_s']:.1f}",
                          "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%",
                          "-" if s["peak_memory_gib"] is None else f"{s['peak_memory_gib']:.1f}")
    Console().print(table)
    Console().print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
