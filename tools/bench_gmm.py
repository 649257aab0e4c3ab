"""Benchmark: UID vs RealUID on the exact 2-D Gaussian mixture (time and quality).

For each recipe and seed it runs the distillation, evaluating every
``--eval-every`` steps, and reports steps/s, the final SW (data units and
relative to the mixture's spread), the mode-weight error, and the wall time
at which ``sw_rel`` first reached the goal (0.05: SW <= 0.05 in units of a
unit-spread mixture). Prints a table and writes JSON.

    python tools/bench_gmm.py --seeds 0,1,2 --out runs/bench_gmm.json
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.table import Table

from realuid.engine.runner import run

RECIPES = {"UID": "gin/uid_fm_gmm.gin", "RealUID": "gin/realuid_fm_gmm.gin"}


def bench_one(recipe: str, seed: int, steps: int, eval_every: int, goal: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        loop = run(recipe, [f"TrainingLoop.steps = {steps}", f"TrainingLoop.eval_every = {eval_every}",
                            f"TrainingLoop.checkpoint_every = {steps}"],
                   out=Path(tmp) / "run", seed=seed, progress=False)
        total = time.perf_counter() - start
        rows = loop.log.rows()
    final = rows[-1]
    reached = next((r for r in rows if r["sw_rel"] <= goal), None)
    return {
        "seed": seed, "steps": steps, "wall_time_train": final["wall_time"], "wall_time_total": round(total, 2),
        "steps_per_s": steps / final["wall_time"], "sw": final["sw"], "sw_rel": final["sw_rel"],
        "sw_floor": final["sw_floor"], "mode_weight_error": final["mode_weight_error"], "on_mode": final["on_mode"],
        "goal_step": None if reached is None else reached["step"],
        "goal_wall_time": None if reached is None else reached["wall_time"],
        "curve": [{k: r[k] for k in ("step", "wall_time", "sw", "sw_rel", "mode_weight_error")} for r in rows],
    }


def main(seeds: str = typer.Option("0,1,2", help="comma-separated seeds"), steps: int = 2000, eval_every: int = 100,
         goal: float = 0.05, out: Path = Path("runs/bench_gmm.json")):
    """Run every recipe for every seed; print the table and write JSON."""
    seeds = [int(s) for s in seeds.split(",") if s.strip()]
    results = {"threads": torch.get_num_threads(), "goal_sw_rel": goal, "runs": {}}
    for name, recipe in RECIPES.items():
        results["runs"][name] = [bench_one(recipe, s, steps, eval_every, goal) for s in seeds]

    table = Table(title=f"GMM distillation, {steps} steps, {torch.get_num_threads()} threads")
    for col in ("method", "seed", "steps/s", "final sw", "sw_rel", "mode-w err", "on mode",
                f"t(sw_rel<={goal}) s"):
        table.add_column(col, justify="right")
    for name, runs in results["runs"].items():
        for r in runs:
            table.add_row(name, str(r["seed"]), f"{r['steps_per_s']:.1f}", f"{r['sw']:.3f}", f"{r['sw_rel']:.3f}",
                          f"{r['mode_weight_error']:.3f}", f"{r['on_mode']:.3f}",
                          "-" if r["goal_wall_time"] is None else f"{r['goal_wall_time']:.1f}")
        table.add_row(name, "median", f"{statistics.median(r['steps_per_s'] for r in runs):.1f}",
                      f"{statistics.median(r['sw'] for r in runs):.3f}",
                      f"{statistics.median(r['sw_rel'] for r in runs):.3f}",
                      f"{statistics.median(r['mode_weight_error'] for r in runs):.3f}", "", "", style="bold")
    Console().print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    Console().print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
