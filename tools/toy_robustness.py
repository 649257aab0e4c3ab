"""Robustness of the toy recipes: does each ``gin/*_gmm.gin`` keep every mode, seed after seed?

Each chosen recipe runs at its own settings (or ``--steps`` / ``--bind`` overrides) for ``--seeds``
seeds on each chosen mixture. A mixture is a named set of ``GaussianMixture`` bindings (means, stds,
weights) applied to the run's data; the exact teacher and the metrics read the data's mixture, so
they follow it:

* ``default``: the recipe's own (gin/base/gmm_2d.gin: three equal modes 8 apart, std 0.5);
* ``skewed``: the same three modes with weights 0.5 / 0.3 / 0.2;
* ``kite``: another triangle (sides 8.2-8.5) with per-mode stds 0.4 / 0.6 / 0.5 and weights 0.2 / 0.35 / 0.45.

A seed is *kept* when its final EMA generator has every mode at >= half its true weight, on-mode
share >= 0.9 (Mahalanobis radius 3; true samples: 0.989) and mode-weight error max_k |w_hat_k - w_k|
<= 0.05. Reported per recipe and mixture: seeds kept, mean on-mode, mean weight error, mean SW and
SW floor, mean training wall time (the loop's, without evaluation) and the wall time of the whole run.
A second stage (``realuid_ft_fm_gmm``) runs its first stage (``realuid_fm_gmm``, same seed and
mixture) before it; its times include the first stage's.

Prints a rich table and writes JSON (default docs/results/toy_robustness.json). Runs go to a
process pool of ``--jobs`` workers, one thread each: on the 2-core project machines keep ``--jobs 1``.

    python tools/toy_robustness.py                                        # every recipe, 10 seeds, 2 mixtures
    python tools/toy_robustness.py --recipes fgm_fm,uid_edm --seeds 3 --mixtures default
    python tools/toy_robustness.py --recipes realuid_fm --bind "TrainingLoop.steps = 1000" --out runs/r.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per worker process, set before torch loads

import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor, as_completed  # noqa: E402
from concurrent.futures import TimeoutError as FuturesTimeout  # noqa: E402
from multiprocessing import get_context  # noqa: E402
from pathlib import Path  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GIN = ROOT / "gin"
SECOND_STAGES = {"realuid_ft_fm_gmm": "realuid_fm_gmm"}   # recipe -> its first stage
MIXTURES = {
    "default": [],
    "skewed": ["GaussianMixture.weights = [0.5, 0.3, 0.2]"],
    "kite": ["GaussianMixture.means = [[-5.0, -1.0], [3.0, -3.0], [2.0, 5.0]]",
             "GaussianMixture.stds = [0.4, 0.6, 0.5]",
             "GaussianMixture.weights = [0.2, 0.35, 0.45]"],
}
ON_MODE, WEIGHT_ERROR, HALF = 0.9, 0.05, 0.5   # the seed criterion


def toy_recipes() -> list[str]:
    return sorted(p.name.removesuffix(".gin") for p in GIN.glob("*_gmm.gin"))


def kept(metrics: dict, true_weights: list[float]) -> bool:
    """Every mode at >= half its true weight, on-mode >= 0.9 and mode-weight error <= 0.05."""
    every_mode = all(w >= HALF * t for w, t in zip(metrics["mode_weights"], true_weights))
    return every_mode and metrics["on_mode"] >= ON_MODE and metrics["mode_weight_error"] <= WEIGHT_ERROR


def run_one(recipe: str, mixture: str, seed: int, binds: list[str], steps: int) -> dict:
    """One seed of one recipe on one mixture (a worker process): the final metrics and the wall times."""
    import torch

    from realuid.engine.runner import run

    torch.set_num_threads(1)
    os.chdir(ROOT)   # recipes include 'gin/base/...' from the repository root
    common = [*MIXTURES[mixture], *binds]

    def one(name: str, out: Path, extra: list[str]):
        budget = extra_steps(name, steps)
        start = time.perf_counter()
        loop = run(GIN / f"{name}.gin", [*common, *budget, *extra], out=out, seed=seed, progress=False)
        return loop, time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        train, total, extra = 0.0, 0.0, []
        if recipe in SECOND_STAGES:
            first, seconds = one(SECOND_STAGES[recipe], Path(tmp) / "stage1", [])
            train, total = first.log.rows()[-1]["wall_time"], seconds
            extra = [f"DistillationTrainer.generator_checkpoint = '{Path(tmp) / 'stage1'}'"]
        loop, seconds = one(recipe, Path(tmp) / "run", extra)
        final = loop.log.rows()[-1]
        weights = [float(w) for w in loop.trainer.data.weights]
    return {"recipe": recipe, "mixture": mixture, "seed": seed, "steps": loop.steps,
            "kept": kept(final, weights), "true_weights": [round(w, 4) for w in weights],
            "mode_weights": final["mode_weights"], "on_mode": final["on_mode"],
            "mode_weight_error": final["mode_weight_error"], "sw": final["sw"], "sw_floor": final["sw_floor"],
            "wall_time_train": train + final["wall_time"], "wall_time_total": round(total + seconds, 2)}


def extra_steps(recipe: str, steps: int) -> list[str]:
    """Bindings of a --steps override (evaluation and checkpoint at the end only); none keeps the recipe's."""
    if not steps:
        return ["TrainingLoop.eval_every = 100000", "TrainingLoop.checkpoint_every = 100000"]
    return [f"TrainingLoop.steps = {steps}", f"TrainingLoop.eval_every = {steps}",
            f"TrainingLoop.checkpoint_every = {steps}"]


def summarise(runs: list[dict]) -> dict:
    mean = lambda key: statistics.fmean(r[key] for r in runs)   # noqa: E731
    return {"seeds": len(runs), "kept": sum(r["kept"] for r in runs), "on_mode": mean("on_mode"),
            "mode_weight_error": mean("mode_weight_error"), "worst_weight_error": max(r["mode_weight_error"]
                                                                                       for r in runs),
            "sw": mean("sw"), "sw_floor": mean("sw_floor"), "wall_time_train": mean("wall_time_train"),
            "wall_time_total": mean("wall_time_total"), "steps": runs[0]["steps"]}


def choose(text: str, known: list[str], what: str, normalise=lambda s: s) -> list[str]:
    names = [normalise(n.strip()) for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise typer.BadParameter(f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from "
                                 f"{', '.join(known)} (comma-separated)")
    return list(dict.fromkeys(names))


def main(recipes: str = typer.Option("all", help="comma-separated toy recipes (e.g. fgm_fm,uid_edm), or 'all'"),
         seeds: int = typer.Option(10, help="number of seeds per recipe and mixture"),
         first_seed: int = typer.Option(0, help="the first seed (seeds first_seed .. first_seed + seeds - 1)"),
         mixtures: str = typer.Option("default,skewed", help=f"comma-separated mixtures: {', '.join(MIXTURES)}"),
         steps: int = typer.Option(0, help="override every recipe's TrainingLoop.steps (0: the recipe's own)"),
         bind: list[str] = typer.Option([], help="extra gin binding for every run (repeatable)"),
         jobs: int = typer.Option(1, help="worker processes, one thread each (2-core machines: 1)"),
         out: Path = typer.Option(ROOT / "docs/results/toy_robustness.json", help="JSON written here"),
         journal: Path | None = typer.Option(None, help="also append each finished run to this JSONL file"),
         deadline: float = typer.Option(0.0, help="stop after this many seconds with the runs finished by then "
                                                  "(0: none); runs go seed by seed, so every recipe gets some")):
    """Run each toy recipe over seeds and mixtures; print seeds kept, on-mode, weight error, wall time."""
    known = toy_recipes()
    chosen = known if recipes.strip() == "all" else \
        choose(recipes, known, "recipe", lambda s: s.removesuffix(".gin") if s.removesuffix(".gin").endswith(
            "_gmm") else s.removesuffix(".gin") + "_gmm")
    mixes = choose(mixtures, list(MIXTURES), "mixture")
    if seeds < 1 or first_seed < 0:
        raise typer.BadParameter("need --seeds >= 1 and --first-seed >= 0")
    if jobs < 1:
        raise typer.BadParameter("need --jobs >= 1")
    if steps < 0:
        raise typer.BadParameter("need --steps >= 0 (0: the recipe's own)")
    if deadline < 0:
        raise typer.BadParameter("need --deadline >= 0 (0: none)")
    console = Console()
    # seed by seed: a run stopped by --deadline has the first seeds of every recipe and mixture
    todo = [(r, m, s) for s in range(first_seed, first_seed + seeds) for r in chosen for m in mixes]
    console.print(f"{len(todo)} runs ({len(chosen)} recipes x {len(mixes)} mixtures x {seeds} seeds), {jobs} jobs")
    runs, start = [], time.perf_counter()
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), max_tasks_per_child=1)
    futures = {pool.submit(run_one, r, m, s, list(bind), steps): (r, m, s) for r, m, s in todo}
    try:
        for done, future in enumerate(as_completed(futures, timeout=deadline or None), 1):
            r = future.result()
            runs.append(r)
            if journal is not None:
                with journal.open("a") as f:
                    f.write(json.dumps(r) + "\n")
            console.print(f"[{done}/{len(todo)} {time.perf_counter() - start:.0f}s] {r['recipe']} {r['mixture']} "
                          f"seed {r['seed']}: {'kept' if r['kept'] else 'LOST'} on-mode {r['on_mode']:.3f} "
                          f"weights {r['mode_weights']} (true {r['true_weights']}) SW {r['sw']:.3f} "
                          f"{r['wall_time_total']:.0f}s")
    except FuturesTimeout:
        console.print(f"[bold]deadline of {deadline:.0f} s: {len(todo) - len(runs)} of {len(todo)} runs unfinished, "
                      "left out[/bold]")
        workers = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in workers:   # the runs still going are abandoned
            process.terminate()
    else:
        pool.shutdown()
    if not runs:
        console.print("[bold red]no run finished[/bold red]")
        raise typer.Exit(1)
    runs.sort(key=lambda r: (r["recipe"], r["mixture"], r["seed"]))
    summary = {f"{r}|{m}": summarise(group) for r in chosen for m in mixes
               if (group := [x for x in runs if x["recipe"] == r and x["mixture"] == m])}

    table = Table(title=f"Toy recipes over {seeds} seeds (kept: every mode >= half its weight, on-mode >= "
                        f"{ON_MODE}, weight error <= {WEIGHT_ERROR})")
    for col in ("recipe", "mixture", "steps", "kept", "on-mode", "weight err", "worst err", "SW", "SW floor",
                "train s", "run s"):
        table.add_column(col, justify="left" if col in ("recipe", "mixture") else "right")
    for key, s in summary.items():
        recipe, mixture = key.split("|")
        table.add_row(recipe, mixture, str(s["steps"]), f"{s['kept']}/{s['seeds']}", f"{s['on_mode']:.3f}",
                      f"{s['mode_weight_error']:.3f}", f"{s['worst_weight_error']:.3f}", f"{s['sw']:.3f}",
                      f"{s['sw_floor']:.3f}", f"{s['wall_time_train']:.1f}", f"{s['wall_time_total']:.1f}",
                      style=None if s["kept"] >= 0.9 * s["seeds"] else "bold red")
    console.print(table)
    import torch
    results = {"command": sys.argv, "bindings": list(bind), "steps_override": steps, "jobs": jobs,
               "machine": {"cpus": os.cpu_count(), "threads_per_run": 1, "python": platform.python_version(),
                           "torch": torch.__version__},
               "mixtures": {m: MIXTURES[m] for m in mixes}, "criterion": {"on_mode": ON_MODE,
                                                                         "mode_weight_error": WEIGHT_ERROR,
                                                                         "min_share_of_true_weight": HALF},
               "wall_time_s": round(time.perf_counter() - start, 1), "runs_asked": len(todo),
               "runs_unfinished": len(todo) - len(runs), "summary": summary, "runs": runs}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
