"""Benchmark: time, throughput, memory and MFU of each kind of training step on images.

Builds the image recipe (default ``gin/realuid_fm_cifar.gin``: the paper's
36.8M U-Net, batch 256, K = 5) and the teacher recipe through the normal
runner (``realuid.engine.runner.build``: a ``TrainingLoop`` around its
trainer) and times the trainers' own step functions — a teacher-training
(``MatchingTrainer.train_step``), a fake-model step, a generator step and a
full distillation cycle (``DistillationTrainer.train_step``: K fake steps + one
generator step) — for every precision x compile setting asked for. That is
what one step of ``TrainingLoop.fit`` costs, less the loop's own bookkeeping
after it: stepping the lr schedules (negligible) and accumulating the logged
numbers; evaluations and checkpoints are not timed. FLOPs per step come from
``torch.utils.flop_counter.FlopCounterMode``; MFU divides the achieved FLOP/s
by the GPU's dense peak for that precision. Prints a table and writes JSON.

    python tools/bench_step.py --precision fp32 --precision bf16 --compile off --compile on \
        --out runs/bench_step.json

Loop settings are ``TrainingLoop`` bindings (``-b "TrainingLoop.batch_size = 128"``),
model and optimiser settings the trainer's (``-b "DistillationTrainer.fake_steps = 3"``);
every ``-b`` goes to both recipes. A tiny model on CPU (the smoke preset; the
teacher network randomly initialised when no smoke teacher was trained):

    python tools/bench_step.py --precision fp32 --warmup 1 --repeats 2 -b "include 'gin/smoke/smoke.gin'" \
        -b "CheckpointTeacher.allow_random_init = True" --out /tmp/bench_step.json
"""

from __future__ import annotations

import contextlib
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
    """FLOPs of one call, counted in eager mode.

    Compiled code is not run under the counter: a frame that dynamo fails to
    trace under a dispatch mode is skipped for good, which silently sent every
    later call of the compiled networks back to eager mode (seen on the H100:
    compile "on" timed like "off"). The count is the same either way (fusion
    changes memory traffic, not matmul/convolution FLOPs).
    """
    stance = getattr(torch.compiler, "set_stance", None)
    eager = stance("force_eager") if stance is not None else contextlib.nullcontext()
    with eager, FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def profile_cycle(fn, rows: int) -> dict:
    """One call of ``fn`` under ``torch.profiler``: the ops with the most self device time, and device busy time.

    ``busy_ms`` (the sum of every op's self device time) against ``wall_ms``
    says whether the step is bound by its kernels (busy ~ wall) or by the host
    (launches, syncs, Python: busy << wall).
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    sync()
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        fn()
        sync()
    wall = time.perf_counter() - start

    def device_us(e) -> float:
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)

    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(device_us(e) for e in kernels)   # kernels only: an op's device time is its kernels' again
    top = sorted(kernels, key=device_us, reverse=True)[:rows]
    return {"wall_ms": wall * 1e3, "busy_ms": busy / 1e3,
            "top": [{"op": e.key, "calls": e.count, "device_ms": device_us(e) / 1e3,
                     "share": device_us(e) / busy if busy else 0.0} for e in top]}


COMPILES = {"off": False, "on": True, "regional": "regional"}


def bench_setting(recipe: str, teacher_recipe: str, precision: str, compile_: str, mode: str, binds: list[str],
                  warmup: int, repeats: int, profile_rows: int = 0) -> dict:
    extra = [f"TrainingLoop.precision = '{precision}'", f"TrainingLoop.compile = {COMPILES[compile_]!r}",
             f"TrainingLoop.compile_mode = '{mode}'", *binds]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        loop, _ = build(recipe, extra, out=Path(tmp) / "d", progress=False)
        teacher_loop, _ = build(teacher_recipe, extra, out=Path(tmp) / "t", progress=False)
        built = time.perf_counter()
        loop.trainer.train_step()   # the first cycle: every distillation graph compiles here
        sync()
        first_cycle = time.perf_counter()
        trainer, teacher_trainer = loop.trainer, teacher_loop.trainer
        # one process: the local batch (what each update draws) is the global batch
        k, batch = trainer.fake_steps, loop.local_batch_size
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        kinds = {  # name: (step, updates, batch of each update)
            "teacher step": (teacher_trainer.train_step, 1, teacher_loop.local_batch_size),
            "fake step": (trainer.fake_step, 1, batch),
            "generator step": (trainer.generator_step, 1, batch),
            f"cycle (K={k})": (trainer.train_step, k + 1, batch),
        }
        rows = {}
        for name, (fn, updates, images) in kinds.items():
            seconds = timed(fn, warmup, repeats)
            flops = count_flops(fn)
            peak = peak_flops(precision)
            rows[name] = {
                "batch_size": images,
                "ms": seconds * 1e3, "images_per_s": images * updates / seconds, "gflop": flops / 1e9,
                "tflops_per_s": flops / seconds / 1e12, "mfu": None if peak is None else flops / seconds / peak,
            }
        peak_mem = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        profiled = profile_cycle(trainer.train_step, profile_rows) if profile_rows else None
    return {"precision": precision, "compile": compile_, "compile_mode": mode, "batch_size": batch,
            "peak_memory_gib": peak_mem, "build_s": built - start, "first_cycle_s": first_cycle - built,
            "steps": rows, "profile": profiled, "dynamo": dynamo_counters() if compile_ != "off" else None}


def dynamo_counters() -> dict:
    """What torch.compile did so far (graphs captured, frames, graph breaks): proof that compiled code ran."""
    from torch._dynamo.utils import counters

    return {"stats": dict(counters["stats"]), "frames": dict(counters["frames"]),
            "graph_breaks": sum(counters["graph_break"].values()), "recompiles": dict(counters["recompiles"])}


def main(recipe: str = "gin/realuid_fm_cifar.gin", teacher_recipe: str = "gin/fm_cifar_teacher.gin",
         precision: list[str] = typer.Option(["bf16"], "--precision"),
         compile: list[str] = typer.Option(["off"], "--compile", help="off, on (whole networks) and/or regional"),
         compile_mode: str = typer.Option("default", "--compile-mode", help="torch.compile mode"),
         bind: list[str] = typer.Option([], "--bind", "-b"), warmup: int = 3, repeats: int = 10,
         profile: int = typer.Option(0, help="also profile one distillation cycle: show this many top ops"),
         out: Path = Path("runs/bench_step.json")):
    """Time every step kind for every precision x compile setting (and profile a cycle with --profile N)."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    import os

    bad = [c for c in compile if c not in COMPILES]
    if bad:
        raise typer.BadParameter(f"--compile {bad[0]!r}: use off, on or regional")
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or f"/tmp/torchinductor_{os.environ.get('USER', 'root')}"
    results = {"device": device, "torch": torch.__version__, "recipe": recipe, "inductor_cache": cache,
               "inductor_cache_existed": Path(cache).is_dir(), "settings": []}
    for p in precision:
        for c in compile:
            results["settings"].append(bench_setting(recipe, teacher_recipe, p, c, compile_mode, bind, warmup,
                                                     repeats, profile))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2) + "\n")

    table = Table(title=f"step benchmark on {device} ({recipe})")
    for col in ("precision", "compile", "step", "batch", "ms", "img/s", "GFLOP", "TFLOP/s", "MFU", "peak GiB"):
        table.add_column(col, justify="right")
    for s in results["settings"]:
        for name, r in s["steps"].items():
            table.add_row(s["precision"], s["compile"], name, str(r["batch_size"]),
                          f"{r['ms']:.1f}",
                          f"{r['images_per_s']:.0f}", f"{r['gflop']:.0f}", f"{r['tflops_per_s']:.1f}",
                          "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%",
                          "-" if s["peak_memory_gib"] is None else f"{s['peak_memory_gib']:.1f}")
    Console().print(table)
    for s in results["settings"]:
        Console().print(f"{s['precision']} compile {s['compile']} ({s['compile_mode']}): build {s['build_s']:.1f} s, "
                        f"first cycle {s['first_cycle_s']:.1f} s (inductor cache {results['inductor_cache']}, "
                        f"{'existed' if results['inductor_cache_existed'] else 'cold'} at start)")
        if s["dynamo"]:
            Console().print(f"torch.compile after the {s['precision']} setting: {s['dynamo']}")
        if s["profile"]:
            print_profile(s)
    Console().print(f"wrote {out}")


def print_profile(setting: dict) -> None:
    prof = setting["profile"]
    table = Table(title=f"one cycle, {setting['precision']}, compile {setting['compile']}: "
                        f"device busy {prof['busy_ms']:.1f} ms of {prof['wall_ms']:.1f} ms wall")
    for col in ("kernel", "calls", "device ms", "share"):
        table.add_column(col, justify="left" if col == "kernel" else "right")
    for r in prof["top"]:
        table.add_row(r["op"][:90], str(r["calls"]), f"{r['device_ms']:.2f}", f"{100 * r['share']:.1f}%")
    Console().print(table)


if __name__ == "__main__":
    typer.run(main)
