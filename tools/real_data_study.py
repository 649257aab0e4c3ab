"""What real data does under RealUID: a biased exact teacher and true data on the 2-D mixture.

Set-up (DESIGN §3, §6): the data are the 3-mode mixture of ``gin/base/gmm_2d.gin``
with equal weights; the teacher is the *exact* flow-matching field of the same
modes with wrong weights (``--teacher-weights``, default 2:1:1). A data-free
method (UID, DMD-KL) can at best reproduce the teacher; the real-data term of
RealUID / DMD-KL with real data may pull the generator towards the data.
Every run uses ``gin/uid_fm_gmm.gin`` (rectified flow, x0 parameterisation,
same networks, optimiser and schedule) and changes only the objective:

* RealUID over the (alpha, beta) grid: alpha, beta in {1, 1 - step, ..., 1 - (num - 1) step},
  beta <= 1, alpha = 1 only with beta = 1 (that point is UID);
* DMD-KL (space 'x0') without real data (alpha = 1) and with real data (alpha = ``--dmd-alpha``);
* normalized UID and normalized RealUID (``--normalized-alpha/-beta``), the non-squared distance.

Reported per run (mean over ``--seeds``): final mode-weight error (max_k |w_hat_k - w_k|)
against the data and against the teacher, final SW (data units) against the data and the
teacher, and the first evaluated step at which SW against the data is <= ``--sw-target``
("steps to the target"; the convergence question: UID against the best RealUID).
Beside the measurements, each objective's *ideal* mode weights (``--theory``): the
minimiser of its value at the exact fake optimum over generators that are mixtures of
the data's modes with free weights (:func:`realuid.theory.ideal_weights`), i.e. where training would go
if the generator found the best weights and the fake model were exact. It prints rich
tables, writes ``OUT/real_data_study.json`` and a PNG heat map of the grid
``OUT/real_data_study_grid.png`` (mode-weight error and SW against the data, error
against the teacher, ideal error against the data). It measures; it decides nothing.

    python tools/real_data_study.py                                   # coarse grid, ~5-10 min on 2 cores
    python tools/real_data_study.py --step 0.02 --num 8 --seeds 0,1,2 # the paper's grid (alpha, beta in
                                                                      # {0.86, ..., 1.0}: 57 points + 4
                                                                      # baselines, x3 seeds: ~1.5 h on 2 cores)
    python tools/real_data_study.py --teacher-weights 1,1,1           # an unbiased teacher (convergence only)

Each finished run is appended to ``OUT/runs.jsonl``; running the same command again resumes
an interrupted study (finished runs with the same settings are read back, not rerun), and
``--merge A.json,B.json`` combines studies made with other seeds.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per worker process, set before torch loads

import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor, as_completed  # noqa: E402
from multiprocessing import get_context  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from realuid.theory import ideal_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "gin" / "uid_fm_gmm.gin"


# -- what to run ---------------------------------------------------------------------------------
def grid_values(step: float, num: int) -> list[float]:
    """1, 1 - step, ..., 1 - (num - 1) step, rounded to 1e-6."""
    return [round(1.0 - i * step, 6) for i in range(num)]


def grid_points(step: float, num: int) -> list[tuple[float, float]]:
    """(alpha, beta) with beta <= 1 and alpha = 1 only with beta = 1 (DESIGN §3)."""
    values = grid_values(step, num)
    points = [(1.0, 1.0)]
    points += [(a, b) for a in values if a < 1.0 for b in values]
    return points


def specs(step, num, dmd_alpha, normalized_alpha, normalized_beta) -> list[dict]:
    out = []
    for alpha, beta in grid_points(step, num):
        name = "UID" if (alpha, beta) == (1.0, 1.0) else f"RealUID({alpha:g}, {beta:g})"
        out.append({"name": name, "method": "RealUID", "alpha": alpha, "beta": beta, "grid": True,
                    "binds": ["DistillationTrainer.objective = @RealUID()", f"RealUID.alpha = {alpha}",
                              f"RealUID.beta = {beta}"]})
    for alpha in (1.0, dmd_alpha):
        out.append({"name": "DMD-KL" if alpha == 1.0 else f"DMD-KL+real({alpha:g})", "method": "DMDKL",
                    "alpha": alpha, "beta": alpha, "grid": False,
                    "binds": ["DistillationTrainer.objective = @DMDKL()", f"DMDKL.alpha = {alpha}",
                              "DMDKL.space = 'x0'"]})
    for alpha, beta in ((1.0, 1.0), (normalized_alpha, normalized_beta)):
        name = "normalized UID" if alpha == 1.0 else f"normalized RealUID({alpha:g}, {beta:g})"
        out.append({"name": name, "method": "RealUID+NormalizedL2", "alpha": alpha, "beta": beta, "grid": False,
                    "binds": ["DistillationTrainer.objective = @RealUID()", f"RealUID.alpha = {alpha}",
                              f"RealUID.beta = {beta}", "RealUID.distance = @NormalizedL2()"]})
    return out


# -- one run (in its own process: gin is global state) -------------------------------------------
def run_one(spec: dict, seed: int, common: list[str], sw_target: float) -> dict:
    torch.set_num_threads(1)
    import numpy as np

    from realuid.engine.runner import run
    from realuid.metrics.toy import MixtureMetrics

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        loop = run(BASE, [*common, *spec["binds"]], out=Path(tmp) / "run", seed=seed, progress=False)
        seconds = time.perf_counter() - start
        rows = loop.log.rows()
        samples = torch.from_numpy(np.load(Path(tmp) / "run" / "samples.npy"))
    final = rows[-1]
    vs_teacher = MixtureMetrics(mixture=loop.trainer.teacher.mixture)(samples)
    reached = next((r["step"] for r in rows if r["sw"] <= sw_target), None)
    return {
        **{k: spec[k] for k in ("name", "method", "alpha", "beta", "grid")}, "seed": seed,
        "mwe_data": final["mode_weight_error"], "mwe_teacher": vs_teacher["mode_weight_error"],
        "sw_data": final["sw"], "sw_teacher": vs_teacher["sw"], "sw_floor": final["sw_floor"],
        "on_mode": final["on_mode"], "mode_weights": final["mode_weights"], "steps_to_target": reached,
        "seconds": round(seconds, 1),
        "curve": [{"step": r["step"], "sw": r["sw"], "mwe": r["mode_weight_error"]} for r in rows],
    }


# -- theory: the objective's minimiser over mode weights (realuid.theory) -------------------------
def add_theory(summary: list[dict], data, teacher) -> None:
    """Each row's ideal mode weights (see :func:`ideal_weights`) and their errors against data and teacher."""
    for r in summary:
        if r["method"] == "DMDKL":  # KL(alpha p^w + (1-alpha) p* || p^T) is minimised where the mixture is p^T
            w = (teacher.weights - (1 - r["alpha"]) * data.weights) / r["alpha"]
            w = [round(float(v), 4) for v in w] if bool((w > 0).all()) else None
        else:
            w = ideal_weights(data, teacher, r["alpha"], r["beta"], normalized=r["method"].endswith("NormalizedL2"))
        r["ideal_weights"] = w
        r["ideal_mwe_data"] = None if w is None else max(abs(u - float(v)) for u, v in zip(w, data.weights))
        r["ideal_mwe_teacher"] = None if w is None else max(abs(u - float(v)) for u, v in zip(w, teacher.weights))


# -- summaries -----------------------------------------------------------------------------------
KEPT = 0.05  # a run "keeps all modes" if every mode holds at least this share of its samples


def aggregate(runs: list[dict]) -> list[dict]:
    """Mean over seeds per method; steps_to_target: median over seeds that reached it (None if none did).

    Dropping a mode (a run-to-run event on this mixture) swamps the weight bias in a mean, so the
    mode-weight errors are also averaged over the runs that kept every mode (``*_kept``).
    """
    by_name: dict[str, list[dict]] = {}
    for r in runs:
        by_name.setdefault(r["name"], []).append(r)
    out = []
    for name, rs in by_name.items():
        reached = [r["steps_to_target"] for r in rs if r["steps_to_target"] is not None]
        row = {k: rs[0][k] for k in ("name", "method", "alpha", "beta", "grid")}
        for key in ("mwe_data", "mwe_teacher", "sw_data", "sw_teacher", "on_mode"):
            row[key] = statistics.fmean(r[key] for r in rs)
        row["mode_weights"] = [round(statistics.fmean(r["mode_weights"][k] for r in rs), 4)
                               for k in range(len(rs[0]["mode_weights"]))]
        kept = [r for r in rs if min(r["mode_weights"]) >= KEPT]
        row["kept"] = len(kept)
        row["mwe_data_kept"] = statistics.fmean(r["mwe_data"] for r in kept) if kept else None
        row["mwe_teacher_kept"] = statistics.fmean(r["mwe_teacher"] for r in kept) if kept else None
        row["seeds"] = len(rs)
        row["reached"] = len(reached)
        row["steps_to_target"] = statistics.median(reached) if reached else None
        out.append(row)
    return out


def colour(value: float, low: float, high: float) -> tuple[int, int, int]:
    """A perceptually ordered dark-blue -> green -> yellow ramp (low = dark)."""
    anchors = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]
    u = 0.0 if high <= low else min(1.0, max(0.0, (value - low) / (high - low)))
    pos = u * (len(anchors) - 1)
    i = min(int(pos), len(anchors) - 2)
    f = pos - i
    return tuple(int(round(anchors[i][c] + f * (anchors[i + 1][c] - anchors[i][c]))) for c in range(3))


def heat_map(summary: list[dict], values: list[float], path: Path, title: str) -> None:
    """PNG: one panel per metric, alpha down the rows, beta across the columns; the value in each cell."""
    from PIL import Image, ImageDraw, ImageFont

    grid = {(r["alpha"], r["beta"]): r for r in summary if r["grid"]}
    panels = [("mode-weight error vs data", "mwe_data"), ("same, runs that kept all modes", "mwe_data_kept"),
              ("SW vs data", "sw_data"), ("mode-weight error vs teacher", "mwe_teacher"),
              ("ideal mode-weight error vs data", "ideal_mwe_data")]
    cell, margin, top = 64, 70, 60
    n = len(values)
    panel = max(n * cell, 300)
    width = len(panels) * (margin + panel + 20) + 10
    height = top + n * cell + 50
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.text((10, 8), title, fill="black", font=font)
    for p, (label, key) in enumerate(panels):
        x0 = 10 + p * (margin + panel + 20) + margin
        present = [r[key] for r in grid.values() if r.get(key) is not None]
        if not present:
            continue
        low, high = min(present), max(present)
        draw.text((x0, 28), f"{label}  [{low:.3f} .. {high:.3f}]", fill="black", font=font)
        for j, beta in enumerate(values):
            draw.text((x0 + j * cell + 14, top + n * cell + 6), f"{beta:g}", fill="black", font=font)
        draw.text((x0 + n * cell // 2 - 20, top + n * cell + 24), "beta", fill="black", font=font)
        for i, alpha in enumerate(values):
            draw.text((x0 - 50, top + i * cell + cell // 2 - 6), f"a={alpha:g}", fill="black", font=font)
            for j, beta in enumerate(values):
                box = (x0 + j * cell, top + i * cell, x0 + (j + 1) * cell - 2, top + (i + 1) * cell - 2)
                r = grid.get((alpha, beta))
                if r is None or r.get(key) is None:
                    draw.rectangle(box, fill=(235, 235, 235))
                    continue
                rgb = colour(r[key], low, high)
                draw.rectangle(box, fill=rgb)
                ink = "black" if sum(rgb) > 380 else "white"
                draw.text((box[0] + 8, box[1] + cell // 2 - 6), f"{r[key]:.3f}", fill=ink, font=font)
    img.save(path)


def fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_tables(summary: list[dict], values: list[float], sw_target: float, console: Console) -> dict:
    table = Table(title="Biased teacher, true data: final quality (mean over seeds)")
    for col in ("method", "alpha", "beta", "b/a", "mwe vs data", "mwe vs teacher", "SW vs data", "SW vs teacher",
                "on mode", "mode weights", "all modes kept", "mwe vs data (kept)", "mwe vs teacher (kept)",
                "ideal weights", "ideal mwe vs data", f"steps to SW<={sw_target:g}"):
        table.add_column(col, justify="right")
    for r in sorted(summary, key=lambda r: (not r["grid"], r["method"], -r["alpha"], -r["beta"])):
        steps = "-" if r["steps_to_target"] is None else f"{r['steps_to_target']:g} ({r['reached']}/{r['seeds']})"
        ideal = r.get("ideal_weights")
        table.add_row(r["name"], f"{r['alpha']:g}", f"{r['beta']:g}", f"{r['beta'] / r['alpha']:.3f}",
                      f"{r['mwe_data']:.3f}", f"{r['mwe_teacher']:.3f}", f"{r['sw_data']:.3f}",
                      f"{r['sw_teacher']:.3f}", f"{r['on_mode']:.3f}", " ".join(f"{w:.2f}" for w in r["mode_weights"]),
                      f"{r['kept']}/{r['seeds']}", fmt(r["mwe_data_kept"]), fmt(r["mwe_teacher_kept"]),
                      "-" if ideal is None else " ".join(f"{w:.3f}" for w in ideal),
                      "-" if r.get("ideal_mwe_data") is None else f"{r['ideal_mwe_data']:.3f}", steps)
    console.print(table)

    grid = {(r["alpha"], r["beta"]): r for r in summary if r["grid"]}
    for key, label in (("mwe_data", "mode-weight error vs data, all runs"),
                       ("mwe_data_kept", "mode-weight error vs data, runs that kept all modes"),
                       ("ideal_mwe_data", "ideal mode-weight error vs data (theory)")):
        heat = Table(title=f"RealUID grid: {label} (rows alpha, columns beta)")
        heat.add_column("alpha \\ beta")
        for beta in values:
            heat.add_column(f"{beta:g}", justify="right")
        for alpha in values:
            heat.add_row(f"{alpha:g}", *[fmt(grid[(alpha, b)].get(key)) if (alpha, b) in grid else "" for b in values])
        console.print(heat)

    # the convergence question: UID against the best RealUID (lowest final SW vs data among alpha < 1)
    uid = grid.get((1.0, 1.0))
    real = [r for r in grid.values() if r["alpha"] < 1.0]
    best = min(real, key=lambda r: r["sw_data"]) if real else None
    answer = {"uid": uid and {k: uid[k] for k in ("steps_to_target", "sw_data", "mwe_data")},
              "best_realuid": best and {k: best[k] for k in ("name", "steps_to_target", "sw_data", "mwe_data")}}
    if uid and best:
        ratio = None
        if uid["steps_to_target"] and best["steps_to_target"]:
            ratio = uid["steps_to_target"] / best["steps_to_target"]
        answer["speed_up"] = ratio
        console.print(f"Convergence: UID reaches SW <= {sw_target:g} at step {uid['steps_to_target']}, "
                      f"the best RealUID by final SW ({best['name']}) at step {best['steps_to_target']}"
                      + (f" (UID / RealUID = {ratio:.2f})" if ratio else ""))
    return answer


def merged_runs(paths: list[Path], teacher_weights, step, num, steps) -> tuple[list[dict], list[int]]:
    """The runs of earlier JSON outputs, checked to share the teacher, grid and length given on the command line."""
    runs = []
    for path in paths:
        saved = json.loads(path.read_text())
        cfg = saved["config"]
        mine = {"teacher_weights": teacher_weights, "step": step, "num": num, "steps": steps}
        theirs = {k: cfg[k] for k in mine}
        if theirs != mine:
            raise typer.BadParameter(f"{path} was made with {theirs}, not {mine}: pass the same options")
        runs += saved["runs"]
    seen = {(r["name"], r["seed"]) for r in runs}
    if len(seen) != len(runs):
        raise typer.BadParameter("the merged files share (method, seed) runs")
    return runs, sorted({r["seed"] for r in runs})


def parse_numbers(text: str, kind=float) -> list:
    try:
        return [kind(v) for v in text.replace(" ", ",").split(",") if v]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None


def main(teacher_weights: str = typer.Option("2,1,1", help="the teacher's (wrong) mode weights, comma-separated; "
                                             "the data's are equal"),
         step: float = typer.Option(0.04, help="grid step of alpha and beta (the paper's: 0.02)"),
         num: int = typer.Option(4, help="grid values per axis: 1, 1 - step, ... (the paper's: 8)"),
         seeds: str = typer.Option("0", help="comma-separated seeds"),
         steps: int = typer.Option(2000, help="generator steps per run"),
         eval_every: int = typer.Option(100, help="evaluation interval (resolution of 'steps to the target')"),
         eval_samples: int = typer.Option(4000, help="samples per evaluation"),
         sw_target: float = typer.Option(1.0, help="SW against the data (data units) that counts as converged"),
         dmd_alpha: float = typer.Option(0.94, help="alpha of DMD-KL with real data"),
         normalized_alpha: float = typer.Option(0.94), normalized_beta: float = typer.Option(0.96),
         workers: int = typer.Option(2, help="parallel runs (one thread each)"),
         theory: bool = typer.Option(True, help="also compute each objective's ideal mode weights"),
         merge: str = typer.Option("", help="comma-separated JSON files of earlier runs of this tool (same "
                                   "settings, other seeds): combine their runs instead of running"),
         out: Path = typer.Option(Path("runs/real_data_study"), help="folder for the JSON and the PNG")):
    """Run the study, print the tables, write JSON and the heat map."""
    console = Console(width=max(Console().width, 230))
    teacher_weights, seeds = parse_numbers(teacher_weights), parse_numbers(seeds, int)
    if not (step > 0 and num >= 1 and 1 - (num - 1) * step > 0):
        raise typer.BadParameter("need step > 0, num >= 1 and 1 - (num - 1) * step > 0")
    weights = ", ".join(str(float(w)) for w in teacher_weights)
    common = [f"TrainingLoop.steps = {steps}", f"TrainingLoop.eval_every = {eval_every}",
              f"TrainingLoop.checkpoint_every = {steps}", f"TrainingLoop.eval_samples = {eval_samples}",
              "AnalyticTeacher.mixture = @teacher/GaussianMixture()", f"teacher/GaussianMixture.weights = [{weights}]"]
    runs, start = [], time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    settings = {"teacher_weights": teacher_weights, "steps": steps, "eval_every": eval_every,
                "eval_samples": eval_samples, "sw_target": sw_target}
    journal = out / "runs.jsonl"  # one line per finished run: an interrupted study resumes from it
    if merge:
        runs, seeds = merged_runs([Path(p) for p in merge.split(",") if p], teacher_weights, step, num, steps)
        console.print(f"merged {len(runs)} runs (seeds {seeds})")
    todo = [] if merge else \
        [(s, seed) for s in specs(step, num, dmd_alpha, normalized_alpha, normalized_beta) for seed in seeds]
    if todo and journal.is_file():
        wanted = {(s["name"], seed) for s, seed in todo}
        for line in journal.read_text().splitlines():
            entry = json.loads(line)
            key = (entry["run"]["name"], entry["run"]["seed"])
            if entry["settings"] == settings and key in wanted and key not in {(r["name"], r["seed"]) for r in runs}:
                runs.append(entry["run"])
        done_keys = {(r["name"], r["seed"]) for r in runs}
        todo = [(s, seed) for s, seed in todo if (s["name"], seed) not in done_keys]
        console.print(f"resuming: {len(runs)} finished runs read from {journal}")
    if todo:
        console.print(f"{len(todo)} runs of {steps} steps on {workers} worker(s); teacher weights {teacher_weights}")
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        futures = {pool.submit(run_one, s, seed, common, sw_target): (s["name"], seed) for s, seed in todo}
        for done, future in enumerate(as_completed(futures), 1):
            r = future.result()
            runs.append(r)
            with journal.open("a") as f:
                f.write(json.dumps({"settings": settings, "run": r}, default=float) + "\n")
            console.print(f"[{done}/{len(todo)} {time.perf_counter() - start:.0f}s] {r['name']} seed {r['seed']}: "
                          f"mwe data {r['mwe_data']:.3f} teacher {r['mwe_teacher']:.3f}, SW {r['sw_data']:.3f}, "
                          f"steps to target {r['steps_to_target']}")
    summary = aggregate(runs)
    if theory:
        from realuid.data.gmm import GaussianMixture
        from realuid.engine.runner import build

        with tempfile.TemporaryDirectory() as tmp:
            loop, _ = build(BASE, common, out=Path(tmp) / "x", progress=False)
            data, teacher = loop.data, loop.trainer.teacher.mixture
        assert isinstance(data, GaussianMixture) and isinstance(teacher, GaussianMixture)
        add_theory(summary, data, teacher)
    values = grid_values(step, num)
    answer = print_tables(summary, values, sw_target, console)
    result = {"config": {"teacher_weights": teacher_weights, "step": step, "num": num, "seeds": seeds, "steps": steps,
                         "eval_every": eval_every, "eval_samples": eval_samples, "sw_target": sw_target,
                         "dmd_alpha": dmd_alpha, "normalized": [normalized_alpha, normalized_beta],
                         "recipe": str(BASE.relative_to(ROOT)), "bindings": common,
                         "wall_seconds": round(time.perf_counter() - start, 1)},
              "summary": summary, "convergence": answer, "runs": runs}
    (out / "real_data_study.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    heat_map(summary, values, out / "real_data_study_grid.png",
             f"RealUID grid, teacher weights {teacher_weights} vs equal data weights; {len(seeds)} seed(s), "
             f"{steps} steps")
    console.print(f"wrote {out / 'real_data_study.json'} and {out / 'real_data_study_grid.png'}")
    return result


if __name__ == "__main__":
    typer.run(main)
