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

Several settings can compile at once and still be timed alone: start one process
per setting with ``--share-gpu DIR:N`` (the same DIR and N, the number of
processes). Each compiles, waits until all N have compiled (or ``--share-wait``
seconds), then times under an exclusive lock on ``DIR/lock``, one after another
(compiling is host work: the 16 cores of one GPU machine compile several at
once; timing while another compiles would charge its host load to this one).

Loop settings are ``TrainingLoop`` bindings (``-b "TrainingLoop.batch_size = 128"``),
model and optimiser settings the trainer's (``-b "DistillationTrainer.fake_steps = 3"``);
every ``-b`` goes to both recipes. A tiny model on CPU (the smoke preset; the
teacher network randomly initialised when no smoke teacher was trained):

    python tools/bench_step.py --precision fp32 --warmup 1 --repeats 2 -b "include 'gin/smoke/smoke.gin'" \
        -b "CheckpointTeacher.allow_random_init = True" --out /tmp/bench_step.json
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
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


def parse_share(text: str) -> tuple[Path, int] | None:
    """``--share-gpu DIR:N`` as (DIR, N); None when not given; a BadParameter (exit 2) when malformed."""
    if not text:
        return None
    folder, _, count = text.rpartition(":")
    if not folder or not count.isdigit() or int(count) < 1:
        raise typer.BadParameter(f"--share-gpu {text!r}: give DIR:N with N >= 1 processes")
    return Path(folder), int(count)


@contextlib.contextmanager
def gpu_turn(share: tuple[Path, int] | None, wait_s: float):
    """Hold the GPU alone for the timing: with (DIR, N), wait for N processes to be ready, then lock ``DIR/lock``."""
    if share is None:
        yield 0.0
        return
    folder, count = share
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"ready-{os.getpid()}").touch()
    start = time.perf_counter()
    while len(list(folder.glob("ready-*"))) < count and time.perf_counter() - start < wait_s:
        time.sleep(1.0)
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - start
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def bench_setting(recipe: str, teacher_recipe: str, precision: str, compile_: str, mode: str, binds: list[str],
                  warmup: int, repeats: int, profile_rows: int = 0, share: tuple[Path, int] | None = None,
                  share_wait: float = 0.0, teacher_batches: tuple[int, ...] = ()) -> dict:
    extra = [f"TrainingLoop.precision = '{precision}'", f"TrainingLoop.compile = {COMPILES[compile_]!r}",
             f"TrainingLoop.compile_mode = '{mode}'", *binds]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        loop, _ = build(recipe, extra, out=Path(tmp) / "d", progress=False)
        # the teacher recipe at its own batch, or at each batch asked for (one loop, one graph each)
        teacher_loops = [build(teacher_recipe, [*extra, *([f"TrainingLoop.batch_size = {b}"] if b else [])],
                               out=Path(tmp) / f"t{b}", progress=False)[0] for b in (teacher_batches or (0,))]
        built = time.perf_counter()
        loop.trainer.train_step()   # the first cycle: every distillation graph compiles here
        sync()
        first_cycle = time.perf_counter()
        for teacher_loop in teacher_loops:
            teacher_loop.trainer.train_step()   # and the teacher-training graphs
        sync()
        teacher_first = time.perf_counter() - first_cycle
        sampled_ok = samples_fine(loop)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()   # while waiting for its turn, hold no more GPU memory than it uses
        with gpu_turn(share, share_wait) as waited:
            timing = time_steps(loop, teacher_loops, precision, warmup, repeats, profile_rows)
    return {"precision": precision, "compile": compile_, "compile_mode": mode, "batch_size": loop.local_batch_size,
            "cuda_graphs": loop.cuda_graphs, "build_s": built - start, "first_cycle_s": first_cycle - built,
            "teacher_first_step_s": teacher_first, "sampling_ok": sampled_ok, "waited_for_gpu_s": waited, **timing,
            "compile_times": compile_times() if compile_ != "off" else None,
            "dynamo": dynamo_counters() if compile_ != "off" else None}


def samples_fine(loop) -> bool:
    """The EMA generator samples two full chunks, finite (under CUDA graphs: graph outputs read across replays)."""
    n = 8 * loop.local_batch_size
    samples = loop.trainer.sample(n, seed=0)
    return samples.shape[0] == n and bool(torch.isfinite(samples).all())


def time_steps(loop, teacher_loops: list, precision: str, warmup: int, repeats: int, profile_rows: int) -> dict:
    """Every step kind timed (median of ``repeats``), its FLOPs and MFU; peak memory; a profiled cycle."""
    trainer = loop.trainer
    # one process: the local batch (what each update draws) is the global batch
    k, batch = trainer.fake_steps, loop.local_batch_size
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    teachers = {"teacher step" + (f" B{t.local_batch_size}" if len(teacher_loops) > 1 else ""):
                (t.trainer.train_step, 1, t.local_batch_size) for t in teacher_loops}
    kinds = {  # name: (step, updates, batch of each update)
        **teachers,
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
    return {"peak_memory_gib": peak_mem, "steps": rows, "profile": profiled}


def compile_times() -> str | None:
    """Dynamo's and inductor's own breakdown of compile time in this process (a text table), where torch has it."""
    try:
        from torch._dynamo.utils import compile_times as times

        return times(repr="str", aggregate=True)
    except Exception as err:   # a private API: its absence must not lose the benchmark
        return f"unavailable ({type(err).__name__}: {err})"


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
         share_gpu: str = typer.Option("", "--share-gpu", help="DIR:N: compile beside N-1 other processes, "
                                       "time alone (module docstring)"),
         share_wait: float = typer.Option(540.0, "--share-wait", help="most seconds to wait for the others"),
         teacher_batch: list[int] = typer.Option([], "--teacher-batch", help="time the teacher step at this batch "
                                                 "(repeatable; default: the teacher recipe's)"),
         out: Path = Path("runs/bench_step.json")):
    """Time every step kind for every precision x compile setting (and profile a cycle with --profile N)."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    share = parse_share(share_gpu)
    if any(b < 1 for b in teacher_batch):
        raise typer.BadParameter(f"--teacher-batch {min(teacher_batch)}: give a batch size >= 1")
    bad = [c for c in compile if c not in COMPILES]
    if bad:
        raise typer.BadParameter(f"--compile {bad[0]!r}: use off, on or regional")
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or f"/tmp/torchinductor_{os.environ.get('USER', 'root')}"
    results = {"device": device, "torch": torch.__version__, "recipe": recipe, "inductor_cache": cache,
               "inductor_cache_existed": Path(cache).is_dir(), "settings": []}
    for p in precision:
        for c in compile:
            results["settings"].append(bench_setting(recipe, teacher_recipe, p, c, compile_mode, bind, warmup,
                                                     repeats, profile, share, share_wait,
                                                     tuple(teacher_batch)))
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
        Console().print(f"{s['precision']} compile {s['compile']} ({s['compile_mode']}, CUDA graphs "
                        f"{'on' if s['cuda_graphs'] else 'off'}): build {s['build_s']:.1f} s, first cycle "
                        f"{s['first_cycle_s']:.1f} s, first teacher step {s['teacher_first_step_s']:.1f} s "
                        f"(inductor cache {results['inductor_cache']}, "
                        f"{'existed' if results['inductor_cache_existed'] else 'cold'} at start); "
                        f"sampling {'ran' if s['sampling_ok'] else 'FAILED'}")
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
