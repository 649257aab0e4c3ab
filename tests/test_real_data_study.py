"""tools/real_data_study.py: the teachers it builds (a missing, a re-weighted, a moved mode); the position s."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import typer

from realuid.data.gmm import GaussianMixture

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import real_data_study as rds  # noqa: E402

MEANS = [[-4.0, 0.0], [4.0, 0.0], [0.0, 6.928203]]  # gin/base/gmm_2d.gin


def built(binds):
    from realuid.engine.runner import build

    with tempfile.TemporaryDirectory() as tmp:
        loop, _ = build(rds.BASE, ["TrainingLoop.steps = 1", *binds], out=Path(tmp) / "x", progress=False)
    return loop.data, loop.trainer.teacher.mixture


def test_a_missing_mode_teacher_has_the_tiny_weight_and_the_data_keeps_thirds():
    weights = rds.teacher_weights_of("1,1,0")
    assert weights == [1.0, 1.0, rds.TINY]
    data, teacher = built(rds.teacher_binds(weights))
    assert torch.allclose(data.weights, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert torch.allclose(teacher.weights, torch.tensor([0.5, 0.5, 5e-7], dtype=torch.float64), atol=1e-9)
    assert torch.equal(teacher.means, data.means)
    with pytest.raises(typer.BadParameter):
        rds.teacher_weights_of("1,-1,1")
    with pytest.raises(typer.BadParameter):
        rds.teacher_weights_of("0,0,0")


def test_a_moved_mode_teacher_has_only_that_mode_moved():
    k, shift = rds.parse_shift("2:1.5,0")
    assert (k, shift) == (2, [1.5, 0.0])
    means = rds.teacher_means_of(MEANS, (k, shift))
    data, teacher = built(rds.teacher_binds([1, 1, 1], means))
    expected = data.means.clone()
    expected[2, 0] += 1.5
    assert torch.allclose(teacher.means, expected)
    assert not torch.allclose(teacher.means, data.means)
    assert torch.allclose(teacher.weights, data.weights)
    for bad in ("", "x:1,0", "2:0,0", "2", "-1:1,0"):
        if bad:
            with pytest.raises(typer.BadParameter):
                rds.parse_shift(bad)
    assert rds.parse_shift("") is None
    with pytest.raises(typer.BadParameter):  # mode 3 does not exist
        rds.teacher_means_of(MEANS, (3, [1.0, 0.0]))


@pytest.mark.parametrize("where", [0.0, 0.5, 1.0])
def test_the_moved_modes_position_is_0_at_the_data_1_at_the_teacher(where):
    shift = [1.5, 0.0]
    teacher_means = rds.teacher_means_of(MEANS, (2, shift))
    at = rds.teacher_means_of(MEANS, (2, [where * v for v in shift]))
    samples, _ = GaussianMixture(at, 0.5).sample(30000, torch.Generator().manual_seed(0))
    got = rds.mode_position(samples, MEANS, teacher_means, 2)
    assert got["s"] == pytest.approx(where, abs=0.02)
    assert got["share"] == pytest.approx(1 / 3, abs=0.02)
    # no samples at all: no position
    assert rds.mode_position(samples[:0], MEANS, teacher_means, 2)["s"] is None


def test_points_follow_the_design_rules_and_kept_ignores_a_missing_mode():
    assert rds.parse_points("1,1; 0.5,0.3") == [(1.0, 1.0), (0.5, 0.3)]
    for bad in ("1,0.9", "0.5", "0.5,1.2", "0,0.5"):
        with pytest.raises(typer.BadParameter):
            rds.parse_points(bad)
    run = {"name": "UID", "method": "RealUID", "alpha": 1.0, "beta": 1.0, "grid": True, "mwe_data": 0.33,
           "mwe_teacher": 0.0, "sw_data": 1.6, "sw_teacher": 0.1, "on_mode": 0.9, "steps_to_target": None}
    runs = [{**run, "seed": 0, "mode_weights": [0.5, 0.5, 0.0], "s": 0.9},
            {**run, "seed": 1, "mode_weights": [1.0, 0.0, 0.0], "s": 1.1}]
    missing = rds.aggregate(runs, rds.teacher_weights_of("1,1,0"))[0]
    assert missing["kept"] == 1  # seed 0 keeps both modes the teacher has; seed 1 lost one
    assert rds.aggregate(runs, [1, 1, 1])[0]["kept"] == 0
    assert missing["s_mean"] == pytest.approx(1.0) and missing["s_sd"] == pytest.approx(0.1414, abs=1e-3)
    assert missing["mode_weights_sd"][0] == pytest.approx(0.3536, abs=1e-3)


def test_compare_keeps_settings_whose_mode_every_seed_lost_in_the_tables_and_plots(tmp_path):
    """A point where no seed kept the modes has no kept mean but an all-seeds mean (w_3 = 0): both are reported,
    and the plots are written (the PNGs draw it hollow instead of leaving it out)."""
    def run(name, alpha, beta, seed, weights):
        return {"name": name, "method": "RealUID", "alpha": alpha, "beta": beta, "grid": True, "seed": seed,
                "mwe_data": max(abs(w - 1 / 3) for w in weights), "mwe_teacher": 0.0, "sw_data": 1.0,
                "sw_teacher": 0.1, "on_mode": 0.9, "mode_weights": weights, "steps_to_target": None}

    runs = [run("UID", 1.0, 1.0, s, [0.5, 0.25 + d, 0.25 - d]) for s, d in enumerate((0.0, 0.01, -0.01))]
    runs += [run("RealUID(0.94, 0.94)", 0.94, 0.94, s, [0.66, 0.34, 0.0]) for s in range(3)]
    summary = [{"name": "UID", "ideal_weights": [0.5, 0.25, 0.25]},
               {"name": "RealUID(0.94, 0.94)", "ideal_weights": [0.5106, 0.2447, 0.2447]}]
    study = tmp_path / "b.json"
    study.write_text(json.dumps({"config": {"teacher_weights": [2.0, 1.0, 1.0]}, "summary": summary, "runs": runs}))
    record = rds.compare({"b": study}, tmp_path)
    rows = {(r["alpha"], r["beta"]): r for r in record["b"]["rows"]}
    lost = rows[(0.94, 0.94)]
    assert lost["kept"] == "0/3" and lost["mean"] is None and lost["mean_all"] == 0.0 and lost["theory"] == 0.2447
    assert rows[(1.0, 1.0)]["kept"] == "3/3" and rows[(1.0, 1.0)]["mean"] == pytest.approx(0.25)
    for png in ("real_data_runs_beta_eq_alpha.png", "real_data_runs_vs_theory.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    assert "0/3" in (tmp_path / "real_data_runs_tables.md").read_text()
