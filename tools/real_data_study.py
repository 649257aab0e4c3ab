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

Teachers (issue 17, part 2; the theory is ``tools/real_data_theory.py``):

* (a) a missing mode: ``--teacher-weights 1,1,0`` (a 0 becomes 1e-6: ``GaussianMixture`` refuses 0);
* (b) wrong weights: ``--teacher-weights 2,1,1`` (the default);
* (c) a moved mode: ``--teacher-weights 1,1,1 --teacher-shift 2:1.5,0`` (mode 2, counted from 0, moved by
  (1.5, 0)); each run also reports ``s``, the projection of its mode's sample mean on the line data -> teacher
  (1 = teacher, 0 = data), and the theory's ``ideal_s`` (the objective minimised over that line,
  weights fixed at the data's: ``real_data_theory.moved_mode``).

``--points 'a,b;a,b'`` runs chosen settings instead of the grid, ``--no-baselines`` skips DMD-KL and the
normalized distance, and ``--compare a=A.json,b=B.json,c=C.json`` runs nothing: it writes markdown tables
and the plots ``real_data_runs_beta_eq_alpha.png`` and ``real_data_runs_vs_theory.png`` (measured mean +-
seed sd against the theory) into ``--out``.

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


def parse_points(text: str) -> list[tuple[float, float]]:
    """'a,b;a,b;...' -> [(alpha, beta), ...], checked against DESIGN §3 (0 < beta <= 1, alpha = 1 only with beta = 1)."""
    points = []
    for part in (p for p in text.split(";") if p.strip()):
        values = parse_numbers(part)
        if len(values) != 2:
            raise typer.BadParameter(f"{part!r} is not one 'alpha,beta' pair")
        alpha, beta = round(values[0], 6), round(values[1], 6)
        if not (0 < alpha <= 1 and 0 < beta <= 1) or (alpha == 1.0 and beta != 1.0):
            raise typer.BadParameter(f"({alpha}, {beta}): need 0 < alpha, beta <= 1 and alpha = 1 only with beta = 1")
        points.append((alpha, beta))
    return points


def specs(step, num, dmd_alpha, normalized_alpha, normalized_beta, points=None, baselines=True) -> list[dict]:
    out = []
    for alpha, beta in (grid_points(step, num) if points is None else points):
        name = "UID" if (alpha, beta) == (1.0, 1.0) else f"RealUID({alpha:g}, {beta:g})"
        out.append({"name": name, "method": "RealUID", "alpha": alpha, "beta": beta, "grid": True,
                    "binds": ["DistillationTrainer.objective = @RealUID()", f"RealUID.alpha = {alpha}",
                              f"RealUID.beta = {beta}"]})
    if not baselines:
        return out
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


# -- the teacher -----------------------------------------------------------------------------------
TINY = 1e-6  # a "missing" mode's teacher weight: GaussianMixture refuses 0 (tools/real_data_theory.py's teacher (a))


def teacher_weights_of(text: str) -> list[float]:
    """Comma-separated weights; a 0 stands for a missing mode and becomes TINY."""
    weights = parse_numbers(text)
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise typer.BadParameter(f"{text!r}: teacher weights must be >= 0, not all 0")
    return [w if w > 0 else TINY for w in weights]


def parse_shift(text: str) -> tuple[int, list[float]] | None:
    """'K:dx,dy' (mode K, counted from 0, moved by (dx, dy)) -> (K, [dx, dy]); '' -> None."""
    if not text:
        return None
    mode, sep, vector = text.partition(":")
    try:
        k = int(mode)
    except ValueError:
        k = -1
    shift = parse_numbers(vector) if sep else []
    if k < 0 or not shift or not any(shift):
        raise typer.BadParameter(f"{text!r} is not 'K:dx,dy' with a mode index K >= 0 and a non-zero move")
    return k, shift


def teacher_means_of(data_means, shift: tuple[int, list[float]] | None) -> list[list[float]]:
    """The data's mode centres with mode K moved by the shift."""
    means = [[float(v) for v in m] for m in data_means]
    if shift is not None:
        k, vector = shift
        if k >= len(means) or len(vector) != len(means[k]):
            raise typer.BadParameter(f"the shift {shift} does not fit {len(means)} modes of dimension {len(means[0])}")
        means[k] = [m + v for m, v in zip(means[k], vector)]
    return means


def teacher_binds(weights, means=None) -> list[str]:
    """Bindings that make the exact teacher the mixture with these weights (and mode centres, if given)."""
    out = ["AnalyticTeacher.mixture = @teacher/GaussianMixture()",
           f"teacher/GaussianMixture.weights = [{', '.join(str(float(w)) for w in weights)}]"]
    return out if means is None else [*out, f"teacher/GaussianMixture.means = {means}"]


def mode_position(samples: torch.Tensor, data_means, teacher_means, k: int) -> dict:
    """Where the samples put the moved mode k: s = projection of their mean on the line data -> teacher.

    A sample belongs to mode k when its nearest centre among the other modes and the two positions of
    mode k (the data's and the teacher's) is one of the latter. s = <m - mu_k, d> / |d|^2 with m the
    mean of those samples, mu_k the data's centre and d the teacher's move: 1 at the teacher, 0 at the data.
    """
    x = samples.detach().double().flatten(1)
    data_means = torch.as_tensor(data_means, dtype=torch.float64)
    moved = torch.as_tensor(teacher_means, dtype=torch.float64)[k]
    centres = torch.cat([data_means, moved[None]])
    nearest = torch.cdist(x, centres).argmin(1)
    mine = x[(nearest == k) | (nearest == len(data_means))]
    d = moved - data_means[k]
    if len(mine) == 0:
        return {"s": None, "share": 0.0}
    s = float((mine.mean(0) - data_means[k]) @ d / (d @ d))
    return {"s": round(s, 4), "share": round(len(mine) / len(x), 4)}


# -- one run (in its own process: gin is global state) -------------------------------------------
def run_one(spec: dict, seed: int, common: list[str], sw_target: float, moved: dict | None = None) -> dict:
    """One run; ``moved`` = {"k", "data_means", "teacher_means"} adds the moved mode's position ``s``."""
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
    position = {} if moved is None else \
        mode_position(samples, moved["data_means"], moved["teacher_means"], moved["k"])
    return {
        **{k: spec[k] for k in ("name", "method", "alpha", "beta", "grid")}, "seed": seed,
        "mwe_data": final["mode_weight_error"], "mwe_teacher": vs_teacher["mode_weight_error"],
        "sw_data": final["sw"], "sw_teacher": vs_teacher["sw"], "sw_floor": final["sw_floor"],
        "on_mode": final["on_mode"], "mode_weights": final["mode_weights"], "steps_to_target": reached,
        "seconds": round(seconds, 1), **position,
        "curve": [{"step": r["step"], "sw": r["sw"], "mwe": r["mode_weight_error"], "w": r["mode_weights"]}
                  for r in rows],
    }


# -- theory: the objective's minimiser over mode weights (realuid.theory) -------------------------
def add_theory(summary: list[dict], data, teacher, shift=None) -> None:
    """Each row's ideal mode weights (see :func:`ideal_weights`) and their errors against data and teacher.

    With a moved mode (``shift``) the teacher's modes are not the data's, which ``ideal_weights`` assumes;
    then each RealUID row gets instead ``ideal_s``: the minimiser over positions data + s * shift of the
    moved mode, weights fixed at the data's (``tools/real_data_theory.py``'s ``moved_mode``, mode 3 only).
    """
    if shift is not None:
        import sys

        sys.path.insert(0, str(ROOT / "tools"))
        import real_data_theory as rdt

        k, vector = shift
        usable = k == 2 and data.means.tolist() == torch.tensor(rdt.MEANS, dtype=torch.float64).tolist()
        objective = rdt.Objective(data.means, data.weights, teacher.means, teacher.weights) if usable else None
        for r in summary:
            r["ideal_weights"] = r["ideal_mwe_data"] = r["ideal_mwe_teacher"] = None
            is_squared = r["method"] == "RealUID"
            r["ideal_s"] = rdt.moved_mode(objective, vector, r["alpha"], r["beta"])["s_argmin"] \
                if usable and is_squared else None
        return
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


def spread(row: dict, suffix: str, values: list[float], name: str) -> None:
    """row[name + '_mean' + suffix], row[name + '_sd' + suffix]: mean and sample sd (None below 2 values)."""
    if values:
        row[f"{name}_mean{suffix}"] = round(statistics.fmean(values), 4)
        row[f"{name}_sd{suffix}"] = round(statistics.stdev(values), 4) if len(values) > 1 else None


def aggregate(runs: list[dict], teacher_weights=None) -> list[dict]:
    """Mean over seeds per method; steps_to_target: median over seeds that reached it (None if none did).

    Dropping a mode (a run-to-run event on this mixture) swamps the weight bias in a mean, so the
    mode-weight errors are also averaged over the runs that kept every mode (``*_kept``). A mode the
    teacher misses (weight < KEPT) is not required to be kept. Seed spreads: ``mode_weights_sd``
    (sample standard deviation per mode), ``w3_mean`` / ``w3_sd`` (the third mode) and, for a moved mode,
    ``s_mean`` / ``s_sd``; with ``_kept``: over the seeds that kept the modes.
    """
    need = [k for k, w in enumerate(teacher_weights or []) if w / sum(teacher_weights) >= KEPT] or None
    by_name: dict[str, list[dict]] = {}
    for r in runs:
        by_name.setdefault(r["name"], []).append(r)
    out = []
    for name, rs in by_name.items():
        reached = [r["steps_to_target"] for r in rs if r["steps_to_target"] is not None]
        row = {k: rs[0][k] for k in ("name", "method", "alpha", "beta", "grid")}
        for key in ("mwe_data", "mwe_teacher", "sw_data", "sw_teacher", "on_mode"):
            row[key] = statistics.fmean(r[key] for r in rs)
        modes = range(len(rs[0]["mode_weights"]))
        row["mode_weights"] = [round(statistics.fmean(r["mode_weights"][k] for r in rs), 4) for k in modes]
        row["mode_weights_sd"] = [round(statistics.stdev(r["mode_weights"][k] for r in rs), 4) if len(rs) > 1
                                  else None for k in modes]
        kept = [r for r in rs if min(r["mode_weights"][k] for k in (need or modes)) >= KEPT]
        row["kept"] = len(kept)
        row["mwe_data_kept"] = statistics.fmean(r["mwe_data"] for r in kept) if kept else None
        row["mwe_teacher_kept"] = statistics.fmean(r["mwe_teacher"] for r in kept) if kept else None
        for suffix, group in (("", rs), ("_kept", kept)):  # the seeds' spread, of all seeds and of the kept ones
            spread(row, suffix, [r["mode_weights"][2] for r in group if len(r["mode_weights"]) > 2], "w3")
            spread(row, suffix, [r["s"] for r in group if r.get("s") is not None], "s")
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
                "ideal weights", "ideal mwe vs data", f"steps to SW<={sw_target:g}", "w sd", "s (sd)", "ideal s"):
        table.add_column(col, justify="right")
    for r in sorted(summary, key=lambda r: (not r["grid"], r["method"], -r["alpha"], -r["beta"])):
        steps = "-" if r["steps_to_target"] is None else f"{r['steps_to_target']:g} ({r['reached']}/{r['seeds']})"
        ideal = r.get("ideal_weights")
        table.add_row(r["name"], f"{r['alpha']:g}", f"{r['beta']:g}", f"{r['beta'] / r['alpha']:.3f}",
                      f"{r['mwe_data']:.3f}", f"{r['mwe_teacher']:.3f}", f"{r['sw_data']:.3f}",
                      f"{r['sw_teacher']:.3f}", f"{r['on_mode']:.3f}", " ".join(f"{w:.2f}" for w in r["mode_weights"]),
                      f"{r['kept']}/{r['seeds']}", fmt(r["mwe_data_kept"]), fmt(r["mwe_teacher_kept"]),
                      "-" if ideal is None else " ".join(f"{w:.3f}" for w in ideal),
                      "-" if r.get("ideal_mwe_data") is None else f"{r['ideal_mwe_data']:.3f}", steps,
                      " ".join(fmt(w) for w in r["mode_weights_sd"]),
                      f"{r['s_mean']:.3f} ({fmt(r['s_sd'])})" if "s_mean" in r else "-", fmt(r.get("ideal_s")))
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


# -- measured against the theory, across teachers (--compare) -------------------------------------
THEORY_JSON = ROOT / "docs" / "results" / "real_data_theory.json"


def quantity(row: dict, teacher: str, suffix: str = "_kept") -> tuple:
    """The figure that tells what real data fixed: (label, measured mean, seed sd, theory) for a summary row,
    over the seeds that kept the modes (``suffix = '_kept'``) or all seeds (``''``).

    Teachers 'a' (missing mode 3) and 'b' (wrong weights): the third mode's weight, theory from
    ``ideal_weights``; teacher 'c' (mode 3 moved): its position s, theory ``ideal_s``.
    """
    if teacher == "c":
        return "s", row.get(f"s_mean{suffix}"), row.get(f"s_sd{suffix}"), row.get("ideal_s")
    ideal = row.get("ideal_weights")
    return "w_3", row.get(f"w3_mean{suffix}"), row.get(f"w3_sd{suffix}"), None if ideal is None else ideal[2]


def compare_rows(summary: list[dict], teacher: str, data_value: float, teacher_value: float) -> list[dict]:
    """Per (alpha, beta): measured figure against theory, data and teacher, and its distance from UID in
    units of the seed spread (z = difference of means / sqrt(sd_1^2 / n_1 + sd_2^2 / n_2))."""
    rows = sorted(summary, key=lambda r: (-r["alpha"], -r["beta"]))
    uid = next((r for r in rows if (r["alpha"], r["beta"]) == (1.0, 1.0)), None)
    out = []
    for r in rows:
        label, mean, sd, ideal = quantity(r, teacher)
        _, mean_all, sd_all, _ = quantity(r, teacher, "")
        z = None
        if uid is not None and r is not uid and mean is not None:
            _, m0, sd0, _ = quantity(uid, teacher)
            spread = ((sd or 0) ** 2 / max(r["kept"], 1) + (sd0 or 0) ** 2 / max(uid["kept"], 1)) ** 0.5
            z = None if m0 is None or spread == 0 else (mean - m0) / spread
        out.append({"alpha": r["alpha"], "beta": r["beta"], "ratio": round(r["beta"] / r["alpha"], 4),
                    "kept": f"{r['kept']}/{r['seeds']}", "label": label, "mean": mean, "sd": sd, "theory": ideal,
                    "mean_all": mean_all, "sd_all": sd_all,
                    "err_data": None if mean is None else abs(mean - data_value),
                    "err_teacher": None if mean is None else abs(mean - teacher_value),
                    "err_theory": None if mean is None or ideal is None else abs(mean - ideal),
                    "mwe_data_kept": r["mwe_data_kept"], "z_vs_uid": z})
    return out


def compare(studies: dict[str, Path], out: Path, theory_json: Path = THEORY_JSON) -> dict:
    """Markdown tables and two PNGs from the study JSONs of teachers a, b, c (any subset).

    ``OUT/real_data_runs_beta_eq_alpha.png``: the third-mode weight against alpha at beta = alpha and at the
    theory's best grid ratio, measured (mean +- seed sd) against the theory curves of ``theory_json`` and
    the teacher's value (the paper's "no effect"), teachers a and b. ``OUT/real_data_runs_vs_theory.png``:
    every measured point against its theory value, one panel per teacher.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    theory = json.loads(theory_json.read_text())
    tables, record = [], {}
    for name, path in studies.items():
        saved = json.loads(Path(path).read_text())
        weights = saved["config"]["teacher_weights"]
        tw = [w / sum(weights) for w in weights]
        data_value, teacher_value = (0.0, 1.0) if name == "c" else (1 / 3, tw[2])
        theory_of = {r["name"]: {k: v for k, v in r.items() if k.startswith("ideal")} for r in saved["summary"]}
        summary = [{**r, **theory_of.get(r["name"], {})} for r in aggregate(saved["runs"], weights)]
        rows = compare_rows(summary, name, data_value, teacher_value)
        record[name] = {"config": saved["config"], "rows": rows}
        label = rows[0]["label"]
        lines = [f"| alpha | beta | b/a | kept | {label} (kept) mean +- sd | theory | err vs data | err vs teacher | "
                 f"err vs theory | z vs UID | {label} all seeds | mwe vs data (kept) |", "|" + "---|" * 12]
        for r in rows:
            lines.append(f"| {r['alpha']:g} | {r['beta']:g} | {r['ratio']:.3f} | {r['kept']} | "
                         f"{fmt(r['mean'])} +- {fmt(r['sd'])} | {fmt(r['theory'])} | {fmt(r['err_data'])} | "
                         f"{fmt(r['err_teacher'])} | {fmt(r['err_theory'])} | {fmt(r['z_vs_uid'], 1)} | "
                         f"{fmt(r['mean_all'])} +- {fmt(r['sd_all'])} | {fmt(r['mwe_data_kept'])} |")
        tables.append(f"teacher ({name}), {label}: data {data_value:.3f}, teacher {teacher_value:.3f}; kept = seeds "
                      f"that kept every mode the teacher has (each >= {KEPT} of the samples)\n\n"
                      + "\n".join(lines))

    ratio = theory["summary"]["best_ratio_b"]
    measured = "mean +- seed sd over the seeds that kept every teacher mode; hollow: over all seeds"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, name in zip(axes, ("a", "b")):
        curves = theory["curves"][name]
        for key, colour, text in (("beta = alpha", "tab:blue", "theory, beta = alpha"),
                                  ("best", "tab:red", f"theory, beta/alpha = {ratio}")):
            pts = [(a, w[2]) for a, w in curves[key] if w is not None]
            ax.plot(*zip(*pts), color=colour, label=text)
        ax.axhline(curves["teacher"][2], color="black", ls="--", label="teacher = paper's 'no effect'")
        ax.axhline(1 / 3, color="tab:green", ls=":", label="data")
        for r in record.get(name, {}).get("rows", []):
            same, best = r["ratio"] == 1.0, abs(r["ratio"] - ratio) < 1e-3
            if not (same or best):
                continue
            x, c, m = r["alpha"] + (0.006 if best and not same else 0), "tab:blue" if same else "tab:red", \
                "o" if same else "s"
            if r["mean"] is not None:
                ax.errorbar(x, r["mean"], yerr=r["sd"] or 0, fmt=m, color=c, capsize=3)
            if r["mean_all"] is not None and (r["mean"] is None or abs(r["mean_all"] - r["mean"]) > 1e-4):
                ax.errorbar(x + 0.012, r["mean_all"], yerr=r["sd_all"] or 0, fmt=m, color=c, mfc="white",
                            capsize=3)
            kept, seeds = r["kept"].split("/")
            if kept != seeds:  # only where some seed dropped a mode
                ax.annotate(f"kept {r['kept']}", (x, r["mean"] if r["mean"] is not None else r["mean_all"] or 0),
                            fontsize=6, xytext=(4, -10), textcoords="offset points")
        ax.set(xlabel="alpha", ylabel="third-mode weight w_3", ylim=(-0.03, 0.45),
               title=f"teacher ({name}) w^T = {[round(w, 3) for w in curves['teacher']]}, data thirds")
        ax.plot([], [], "o", color="tab:blue", label="measured, beta = alpha")
        ax.plot([], [], "s", color="tab:red", label=f"measured, beta/alpha = {ratio}")
        ax.plot([], [], "o", color="grey", mfc="white", label="measured, all seeds (modes dropped)")
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.suptitle(f"Third-mode weight at beta = alpha; measured: {measured}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "real_data_runs_beta_eq_alpha.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(record), figsize=(5.2 * len(record), 5.2), squeeze=False)
    for ax, (name, rec) in zip(axes[0], record.items()):
        rows = [r for r in rec["rows"] if r["theory"] is not None]
        label = rec["rows"][0]["label"] if rec["rows"] else ""
        points: dict[tuple, list[str]] = {}  # one label per place: settings that land on the same point share it
        for r in rows:
            c = "tab:blue" if r["ratio"] == 1.0 else "tab:orange" if r["alpha"] >= 0.86 else "tab:red"
            if r["mean"] is not None:
                ax.errorbar(r["theory"], r["mean"], yerr=r["sd"] or 0, fmt="o", capsize=3, color=c)
                points.setdefault((round(r["theory"], 2), round(r["mean"], 2)), []).append(
                    f"({r['alpha']:g}, {r['beta']:g}) {r['kept']}")
            if r["mean_all"] is not None and (r["mean"] is None or abs(r["mean_all"] - r["mean"]) > 1e-4):
                ax.errorbar(r["theory"], r["mean_all"], yerr=r["sd_all"] or 0, fmt="o", capsize=3, color=c,
                            mfc="white")
                points.setdefault((round(r["theory"], 2), round(r["mean_all"], 2)), []).append(
                    f"({r['alpha']:g}, {r['beta']:g}) all")
        values = [v for r in rows for v in (r["theory"], r["mean"], r["mean_all"]) if v is not None] or [0, 1]
        near = 0.05 * (max(values) - min(values) or 1)
        groups: list[list] = []  # labels of points closer than 5% of the range share one block
        for (x, y), texts in points.items():
            g = next((g for g in groups if abs(g[0] - x) < near and abs(g[1] - y) < near), None)
            if g is None:
                groups.append([x, y, list(texts)])
            else:
                g[2] += texts
        levels: list[int] = []  # labels of neighbours on one level are staggered upwards
        for i, (x, y, texts) in enumerate(groups):
            taken = {levels[j] for j, g in enumerate(groups[:i]) if abs(y - g[1]) < near and abs(x - g[0]) < 6 * near}
            k = min(set(range(len(groups) + 1)) - taken)
            levels.append(k)
            ax.annotate("\n".join(texts), (x, y), fontsize=6, xytext=(4, 2 + 12 * k), textcoords="offset points",
                        va="bottom")
        lo, hi = min(values) - 0.05, max(values) + 0.05
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, label="measured = theory")
        missing = [f"({r['alpha']:g}, {r['beta']:g})" for r in rows if r["mean"] is None and r["mean_all"] is None]
        if missing:
            ax.text(0.98, 0.02, "not measurable (mode lost in every seed):\n" + ", ".join(missing),
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=6)
        for c, text in (("tab:blue", "beta = alpha"), ("tab:orange", "beta != alpha, alpha >= 0.86"),
                        ("tab:red", "beta != alpha, alpha < 0.86")):
            ax.plot([], [], "o", color=c, label=text)
        ax.plot([], [], "o", color="grey", mfc="white", label="all seeds (where they differ)")
        ax.legend(fontsize=7, loc="upper left")
        ax.set(xlabel=f"theory (ideal) {label}", ylabel=f"measured {label} (mean +- seed sd)",
               title=f"teacher ({name}): {label}, measured against theory")
    fig.suptitle(f"Measured: {measured}; labels: (alpha, beta) kept/seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "real_data_runs_vs_theory.png", dpi=110)
    plt.close(fig)
    text = "\n\n".join(tables)
    (out / "real_data_runs_tables.md").write_text(text + "\n")
    (out / "real_data_runs.json").write_text(json.dumps(record, indent=1, default=float) + "\n")
    print(text)
    return record


def main(teacher_weights: str = typer.Option("2,1,1", help="the teacher's mode weights, comma-separated; "
                                             "a 0 (a missing mode) becomes 1e-6; the data's are equal"),
         teacher_shift: str = typer.Option("", help="'K:dx,dy': the teacher's mode K (from 0) moved by (dx, dy); "
                                           "reports the students' mode-K position s (1 = teacher, 0 = data)"),
         points: str = typer.Option("", help="'alpha,beta;alpha,beta;...': run these RealUID settings instead "
                                    "of the step/num grid (alpha = beta = 1 is UID)"),
         baselines: bool = typer.Option(True, help="also run DMD-KL and the normalized distance"),
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
         compare_studies: str = typer.Option("", "--compare", help="'a=A.json,b=B.json,c=C.json': no runs; "
                                             "tables and plots of these studies against the theory, into OUT"),
         out: Path = typer.Option(Path("runs/real_data_study"), help="folder for the JSON and the PNG")):
    """Run the study, print the tables, write JSON and the heat map."""
    if compare_studies:
        out.mkdir(parents=True, exist_ok=True)
        return compare(dict(part.split("=", 1) for part in compare_studies.split(",") if part), out)
    console = Console(width=max(Console().width, 230))
    teacher_weights, seeds = teacher_weights_of(teacher_weights), parse_numbers(seeds, int)
    shift, chosen = parse_shift(teacher_shift), parse_points(points) if points else None
    if not (step > 0 and num >= 1 and 1 - (num - 1) * step > 0):
        raise typer.BadParameter("need step > 0, num >= 1 and 1 - (num - 1) * step > 0")
    common = [f"TrainingLoop.steps = {steps}", f"TrainingLoop.eval_every = {eval_every}",
              f"TrainingLoop.checkpoint_every = {steps}", f"TrainingLoop.eval_samples = {eval_samples}",
              *teacher_binds(teacher_weights)]
    runs, start = [], time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    settings = {"teacher_weights": teacher_weights, "steps": steps, "eval_every": eval_every,
                "eval_samples": eval_samples, "sw_target": sw_target}
    moved = None
    if shift is not None:
        from realuid.engine.runner import build

        with tempfile.TemporaryDirectory() as tmp:
            data_means = build(BASE, common, out=Path(tmp) / "x", progress=False)[0].data.means.tolist()
        teacher_means = teacher_means_of(data_means, shift)
        common = [*common[:-2], *teacher_binds(teacher_weights, teacher_means)]
        settings["teacher_shift"] = [shift[0], shift[1]]
        moved = {"k": shift[0], "data_means": data_means, "teacher_means": teacher_means}
    journal = out / "runs.jsonl"  # one line per finished run: an interrupted study resumes from it
    if merge:
        runs, seeds = merged_runs([Path(p) for p in merge.split(",") if p], teacher_weights, step, num, steps)
        console.print(f"merged {len(runs)} runs (seeds {seeds})")
    todo = [] if merge else [(s, seed) for seed in seeds for s in
                             specs(step, num, dmd_alpha, normalized_alpha, normalized_beta, chosen, baselines)]
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
        console.print(f"{len(todo)} runs of {steps} steps on {workers} worker(s); teacher weights {teacher_weights}"
                      + (f", mode {shift[0]} moved by {shift[1]}" if shift else ""))
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        futures = {pool.submit(run_one, s, seed, common, sw_target, moved): (s["name"], seed) for s, seed in todo}
        for done, future in enumerate(as_completed(futures), 1):
            r = future.result()
            runs.append(r)
            with journal.open("a") as f:
                f.write(json.dumps({"settings": settings, "run": r}, default=float) + "\n")
            console.print(f"[{done}/{len(todo)} {time.perf_counter() - start:.0f}s] {r['name']} seed {r['seed']}: "
                          f"weights {r['mode_weights']}" + (f", s {r['s']}" if "s" in r else "")
                          + f", mwe data {r['mwe_data']:.3f} teacher {r['mwe_teacher']:.3f}, SW {r['sw_data']:.3f}")
    summary = aggregate(runs, teacher_weights)
    if theory:
        from realuid.data.gmm import GaussianMixture
        from realuid.engine.runner import build

        with tempfile.TemporaryDirectory() as tmp:
            loop, _ = build(BASE, common, out=Path(tmp) / "x", progress=False)
            data, teacher = loop.data, loop.trainer.teacher.mixture
        assert isinstance(data, GaussianMixture) and isinstance(teacher, GaussianMixture)
        add_theory(summary, data, teacher, shift)
    values = grid_values(step, num) if chosen is None else []
    answer = print_tables(summary, values, sw_target, console)
    result = {"config": {"teacher_weights": teacher_weights, "teacher_shift": settings.get("teacher_shift"),
                         "points": chosen, "step": step, "num": num, "seeds": seeds, "steps": steps,
                         "eval_every": eval_every, "eval_samples": eval_samples, "sw_target": sw_target,
                         "dmd_alpha": dmd_alpha, "normalized": [normalized_alpha, normalized_beta],
                         "recipe": str(BASE.relative_to(ROOT)), "bindings": common,
                         "wall_seconds": round(time.perf_counter() - start, 1)},
              "summary": summary, "convergence": answer, "runs": runs}
    (out / "real_data_study.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    if chosen is None:
        heat_map(summary, values, out / "real_data_study_grid.png",
                 f"RealUID grid, teacher weights {teacher_weights} vs equal data weights; {len(seeds)} seed(s), "
                 f"{steps} steps")
    console.print(f"wrote {out / 'real_data_study.json'}"
                  + ("" if chosen else f" and {out / 'real_data_study_grid.png'}"))
    return result


if __name__ == "__main__":
    typer.run(main)
