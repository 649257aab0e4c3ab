"""Benchmark: every matching family x {UID, RealUID} on the exact 2-D Gaussian mixture.

For each family recipe ``gin/uid_<family>_gmm.gin`` (fm, vp, ve, edm, si,
bridge) it runs UID (the recipe as written) and RealUID (the same recipe with
``RealUID.alpha = 0.94, RealUID.beta = 0.96``, real samples in the fake
model's loss, DESIGN §3), and reports the final SW (data units), ``sw_rel``
(SW over the mixture's spread), the mode-weight error, the share of samples on
a mode and the wall time. Prints one table and writes JSON.

Runs go to separate worker processes (gin's configuration is global), each
on one thread; ``--jobs`` of them at a time.

    python tools/bench_families.py --steps 1000 --jobs 2 --out runs/bench_families.json
"""

from __future__ import annotations

import json
import multiprocessing as mp
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

FAMILIES = ("fm", "vp", "ve", "edm", "si", "bridge")
METHODS = {"UID": [], "RealUID": ["RealUID.alpha = 0.94", "RealUID.beta = 0.96"]}


def bench_one(family: str, method: str, seed: int, steps: int, eval_every: int) -> dict:
    """One distillation in this process (a worker); returns its final metrics and timings."""
    import torch

    from realuid.engine.runner import run

    torch.set_num_threads(1)
    recipe = f"gin/uid_{family}_gmm.gin"
    binds = METHODS[method] + [f"TrainingLoop.steps = {steps}", f"TrainingLoop.eval_every = {eval_every}",
                               f"TrainingLoop.checkpoint_every = {steps}"]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        loop = run(recipe, binds, out=Path(tmp) / "run", seed=seed, progress=False)
        total = time.perf_counter() - start
        rows = loop.log.rows()
    final = rows[-1]
    return {
        "family": family, "method": method, "recipe": recipe, "bindings": binds, "seed": seed, "steps": steps,
        "wall_time_train": final["wall_time"], "wall_time_total": round(total, 2), "sw": final["sw"],
        "sw_rel": final["sw_rel"], "sw_floor": final["sw_floor"], "mode_weight_error": final["mode_weight_error"],
        "on_mode": final["on_mode"], "uid_gap": final.get("uid_gap"),
        "curve": [{k: r.get(k) for k in ("step", "wall_time", "sw", "sw_rel", "mode_weight_error", "on_mode")}
                  for r in rows],
    }


def main(families: list[str] = typer.Option(list(FAMILIES), "--family", help="Families to run (repeatable)."),
         seeds: list[int] = typer.Option([0], "--seeds"), steps: int = 1000, eval_every: int = 500,
         jobs: int = typer.Option(2, help="Runs at a time (one CPU thread each)."),
         out: Path = Path("runs/bench_families.json")):
    """Run every family x {UID, RealUID} x seed; print the table and write JSON."""
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise typer.BadParameter(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    tasks = [(f, m, s) for f in families for m in METHODS for s in seeds]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(bench_one, f, m, s, steps, eval_every) for f, m, s in tasks]
        runs = [fut.result() for fut in futures]
    elapsed = time.perf_counter() - start

    table = Table(title=f"GMM distillation per family: {steps} steps, seeds {seeds}, {jobs} runs at a time "
                        f"({elapsed:.0f} s in all)")
    for col in ("family", "method", "seed", "final sw", "sw_rel", "mode-w err", "on mode", "train s", "total s"):
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row(r["family"], r["method"], str(r["seed"]), f"{r['sw']:.3f}", f"{r['sw_rel']:.3f}",
                      f"{r['mode_weight_error']:.3f}", f"{r['on_mode']:.3f}", f"{r['wall_time_train']:.1f}",
                      f"{r['wall_time_total']:.1f}")
    if len(seeds) > 1:
        for f in families:
            for m in METHODS:
                sel = [r for r in runs if r["family"] == f and r["method"] == m]
                table.add_row(f, m, "median", f"{statistics.median(r['sw'] for r in sel):.3f}",
                              f"{statistics.median(r['sw_rel'] for r in sel):.3f}",
                              f"{statistics.median(r['mode_weight_error'] for r in sel):.3f}", "", "", "",
                              style="bold")
    Console().print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {"steps": steps, "seeds": seeds, "jobs": jobs, "threads_per_run": 1, "elapsed_s": round(elapsed, 1),
               "runs": runs}
    out.write_text(json.dumps(results, indent=2) + "\n")
    Console().print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
