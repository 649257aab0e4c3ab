"""tools/cifar_table.py: the smoke path end to end on CPU (teacher, two cells, the table), the deadline, bad options."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from helpers import ROOT, SHARDS, needs_shards

sys.path.insert(0, str(ROOT / "tools"))

import cifar_table  # noqa: E402

ENV = {**os.environ, "REALUID_CIFAR10": str(SHARDS), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def tool(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/cifar_table.py", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_table(tmp_path_factory):
    """``teacher --smoke`` then ``cell teacher-nfe1 uid --smoke --jobs 2`` (both at once) in one work folder."""
    work = tmp_path_factory.mktemp("table")
    teacher = tool("teacher", "--smoke", "--work", str(work))
    cells = tool("cell", "teacher-nfe1", "uid", "--smoke", "--work", str(work), "--jobs", "2")
    return work, teacher, cells


@needs_shards
def test_the_smoke_table_runs_end_to_end(smoke_table):
    work, teacher, cells = smoke_table
    assert teacher.returncode == 0, teacher.stdout[-3000:] + teacher.stderr[-3000:]
    assert cells.returncode == 0, cells.stdout[-3000:] + cells.stderr[-3000:]
    config = json.loads((work / "teacher_export" / "config.json").read_text())
    assert config["kind"] == "teacher" and config["weights_dtype"] == "bfloat16"
    data = json.loads((work / "cifar_table.json").read_text())
    assert data["teacher"]["weights_sha256"] == config["weights_sha256"]
    records = {r["cell"]: r for r in data["cells"]}
    assert set(records) == {"teacher-nfe1", "uid"} and all(r["rc"] == 0 and r["seed"] == 0 for r in records.values())
    from realuid.io import sha256_file

    classifier = sha256_file(work / "fd_classifier.pt")
    assert all(r["classifier"]["sha256"] == classifier and r["jobs"] == 2 for r in records.values())
    assert "2 of 2 slots busy" in " ".join(cells.stdout.split())   # the second cell started beside the first
    uid = records["uid"]
    assert uid["fd_classifier"] >= 0 and uid["steps"] > 0 and uid["train_wall_s"] > 0
    assert uid["curve"] and all({"step", "wall_time", "fd"} <= set(c) for c in uid["curve"])
    assert uid["teacher"]["weights_sha256"] == config["weights_sha256"]
    assert any("realuid run gin/uid_fm_cifar.gin" in c and str(work / "teacher_export") in c for c in uid["commands"])
    assert any("realuid eval" in c and "--nfe 1" in c for c in records["teacher-nfe1"]["commands"])
    assert "uid" in cells.stdout and "teacher-nfe1" in cells.stdout   # the table so far is printed

    table = tool("table", "--results", str(work / "cifar_table.json"), "--markdown")
    assert table.returncode == 0, table.stderr
    assert "| uid | 1 | 0 |" in table.stdout and "not run yet: teacher-nfe2" in table.stdout.replace("\n", " ")
    assert (work / "cifar_table.png").stat().st_size > 10000


@needs_shards
def test_cells_in_the_results_are_skipped_and_the_deadline_stops_before_a_cell(smoke_table):
    work = smoke_table[0]
    again = tool("cell", "uid", "realuid-0.92-0.94", "--smoke", "--work", str(work), "--deadline", "5")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    out = " ".join(again.stdout.split())
    assert "uid seed 0: in" in out and "already" in out
    assert "stopping before realuid-0.92-0.94 seed 0" in out and "not run: realuid-0.92-0.94 --seed 0" in out
    timed = [r for r in json.loads((work / "cifar_table.json").read_text())["cells"] if cifar_table.budget_of(r) in (None, "6 s")]
    assert {r["cell"] for r in timed} == {"teacher-nfe1", "uid"}   # (the step-budget test adds records of its own)


def test_evaluations_of_cells_with_dots_in_their_names_do_not_share_files(tmp_path):
    a, b = (cifar_table.eval_files(tmp_path / f"realuid-0.92-0.94-s{seed}") for seed in (0, 1))
    assert a[0].name == "realuid-0.92-0.94-s0.json" and a[1].name == "realuid-0.92-0.94-s0.png" and a != b


def test_cell_names_parse_and_unknown_ones_list_the_cells():
    assert cifar_table.parse_cell("uid-gan").recipe == "gin/uid_gan_fm_cifar.gin"
    assert cifar_table.parse_cell("teacher-nfe100").nfe == 100
    assert cifar_table.parse_cell("realuid-0.9-0.95").method == ("RealUID.alpha = 0.9", "RealUID.beta = 0.95")
    assert cifar_table.parse_cell("realuid-0.94-0.94").is_first_stage
    assert not cifar_table.parse_cell("realuid-ft").is_first_stage and cifar_table.parse_cell("realuid-ft").second_stage
    control = cifar_table.parse_cell("uid-ft")   # realuid-ft's recipe and start, without real data
    assert control.second_stage and not control.is_first_stage and control.recipe == "gin/realuid_ft_fm_cifar.gin"
    assert control.method == ("RealUID.alpha = 1.0", "RealUID.beta = 1.0")
    for bad in ("uid_gan", "realuid-1.2-0.9", "teacher-nfe3", "realuid-a-b"):
        with pytest.raises(typer.BadParameter, match="unknown cell .*cells are teacher-nfe1"):
            cifar_table.parse_cell(bad)


@pytest.mark.parametrize("args, message", [
    (["cell", "nonsense"], "unknown cell 'nonsense'"),
    (["cell", "uid", "--seconds", "0"], "--seconds 0.0 is below"),
    (["cell", "uid", "--device", "tpu"], "--device 'tpu' is not auto, cuda or cpu"),
    (["cell", "uid", "--inception-weights", "/nonexistent.pth"], "does not exist"),
    (["table", "--results", "/nonexistent/x.json"], "run `python tools/cifar_table.py cell"),
    (["cell", "uid", "--steps", "-1"], "--steps -1 is below 0"),
    (["cell", "uid", "--steps", "100000000"], "above the loop's largest step count"),
    (["cell", "uid", "--compile-mode", "fast"], "--compile-mode 'fast' is not off or one of default"),
    (["cell", "realuid-ft", "--first-stage", "uid"], "uid is not a first-stage RealUID cell; give one of realuid-"),
    (["cell", "uid", "--first-stage", "realuid-0.92-0.94"], "is only for the second-stage cells (realuid-ft, uid-ft)"),
])
def test_bad_options_say_what_and_how_to_fix(args, message, tmp_path):
    result = CliRunner().invoke(cifar_table.app, [*args, "--work", str(tmp_path)] if args[0] == "cell" else args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.replace("│", " ").split())


def test_a_cell_without_a_teacher_export_names_the_command_that_makes_it(tmp_path):
    result = CliRunner().invoke(cifar_table.app, ["cell", "uid", "--work", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 2
    assert "cifar_table.py teacher" in " ".join(result.output.replace("│", " ").split())


def test_fine_tuning_starts_from_the_best_first_stage_and_the_table_averages_seeds():
    def rec(cell, seed, fd):
        return {"cell": cell, "seed": seed, "rc": 0, "fd_classifier": fd, "label": cell, "nfe": 1, "steps": 10 * fd,
                "train_wall_s": 5.0, "seconds": 5.0, "teacher": {"weights_sha256": "a"}}

    data = {"cells": [rec("realuid-0.92-0.94", 0, 4.0), rec("realuid-0.92-0.94", 1, 6.0),
                      rec("realuid-0.94-0.96", 0, 4.5), {**rec("realuid-0.96-0.94", 0, 1.0), "rc": 1}, rec("uid", 0, 0.5)]}
    assert cifar_table.best_first_stage(data) == ("realuid-0.94-0.96", 4.5)   # failed records and UID do not count
    rows = {r["cell"]: r for r in cifar_table.summarise(data)}
    assert rows["realuid-0.92-0.94"]["fd_classifier"] == 5.0
    assert rows["realuid-0.92-0.94"]["fd_classifier_std"] == pytest.approx(2 ** 0.5)
    assert rows["realuid-0.94-0.96"]["fd_classifier_std"] is None
    assert "realuid-0.96-0.94" not in rows   # only failed seeds: not a row


def test_records_of_another_fd_classifier_are_left_out_of_the_table_and_run_again():
    def rec(cell, seed, fd, classifier, created):
        return {"cell": cell, "seed": seed, "rc": 0, "fd_classifier": fd, "label": cell, "nfe": 1, "steps": 10,
                "train_wall_s": 5.0, "seconds": 5.0, "teacher": {"weights_sha256": "a"},
                "classifier": {"sha256": classifier}, "created": created}

    data = {"cells": [rec("uid", 0, 9.0, "old", "2026-12-01T10:00:00"), rec("uid", 1, 7.0, "old", "2026-12-01T10:05:00"),
                      rec("uid", 0, 3.0, "new", "2026-12-02T10:00:00")]}
    assert cifar_table.current_classifier(data) == "new"
    assert set(cifar_table.done(data)) == {("uid", 0)} and cifar_table.done(data)[("uid", 0)]["fd_classifier"] == 3.0
    assert set(cifar_table.done(data, "old")) == {("uid", 0), ("uid", 1)}
    row = cifar_table.summarise(data)[0]
    assert row["seeds"] == [0] and row["fd_classifier"] == 3.0   # the old classifier's FDs are not averaged in
    # a new record replaces only the record of the same cell, seed and classifier
    assert cifar_table.record_key(data["cells"][0]) != cifar_table.record_key(data["cells"][2])


@needs_shards
def test_a_step_budget_makes_a_table_of_its_own_and_finish_records_a_cut_off_cell(smoke_table):
    """``--steps``: every run makes exactly that many generator steps; its records never mix with the time budget's.
    ``finish``: a first stage whose evaluation was cut off is evaluated from its kept generator and recorded."""
    work = smoke_table[0]
    results = work / "cifar_table.json"
    run = tool("cell", "uid", "realuid-0.92-0.94", "--smoke", "--work", str(work), "--steps", "3")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    records = json.loads(results.read_text())["cells"]
    stepped = {r["cell"]: r for r in records if r.get("budget") == "3 steps"}
    assert set(stepped) == {"uid", "realuid-0.92-0.94"}
    assert all(r["steps"] == 3 and r["steps_budget"] == 3 and r["rc"] == 0 for r in stepped.values())
    assert any(r["cell"] == "uid" and r["budget"] == "6 s" and r["seconds"] == 6 for r in records)   # the time budget's
    assert "budget 3 steps per distillation" in " ".join(run.stdout.split())
    timed = tool("table", "--results", str(results), "--markdown", "--budget", "6 s")
    assert timed.returncode == 0 and "Budget per distillation: 6 s." in timed.stdout
    assert "| realuid-0.92-0.94 |" not in timed.stdout   # only run on the step budget
    unknown = tool("table", "--results", str(results), "--budget", "9 steps")
    assert unknown.returncode == 2 and "3 steps" in " ".join(unknown.stderr.split())

    kept = sorted((work / "generators" / "realuid-0.92-0.94-s0-3steps").glob("step_*.pt"))
    assert [p.name for p in kept] == ["step_00000003.pt"]
    wrong = tool("finish", "realuid-0.92-0.94", "--seed", "5", "--generator", str(kept[0]), "--steps", "4",
                 "--smoke", "--work", str(work), "--results", str(results))
    assert wrong.returncode == 2 and "not at the budget's 4" in " ".join(wrong.stderr.split())
    done = tool("finish", "realuid-0.92-0.94", "--seed", "5", "--generator", str(kept[0]), "--steps", "3",
                "--smoke", "--work", str(work), "--results", str(results), "--note", "test")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    finished = [r for r in json.loads(results.read_text())["cells"] if r["seed"] == 5]
    assert len(finished) == 1 and finished[0]["rc"] == 0 and finished[0]["finished_from"] == str(kept[0])
    assert finished[0]["budget"] == "3 steps" and finished[0]["fd_classifier"] >= 0 and finished[0]["note"] == "test"

    # both second stages start from the same kept generator; the control differs only in alpha = beta = 1
    second = tool("cell", "uid-ft", "realuid-ft", "--smoke", "--work", str(work), "--results", str(results),
                  "--steps", "3", "--first-stage", "realuid-0.92-0.94")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    stages = {r["cell"]: r for r in json.loads(results.read_text())["cells"]
              if r["cell"] in ("uid-ft", "realuid-ft") and r.get("budget") == "3 steps"}
    assert set(stages) == {"uid-ft", "realuid-ft"} and all(r["rc"] == 0 for r in stages.values())
    for name, r in stages.items():
        assert r["first_stage"] == "realuid-0.92-0.94" and r["offset"]["steps"] == 3 and r["steps"] == 3
        train = next(c for c in r["commands"] if "realuid run" in c)
        assert "gin/realuid_ft_fm_cifar.gin" in train and f"{kept[0].parent.name}/{kept[0].name}" in train
        assert ("RealUID.alpha = 1.0" in train) == (name == "uid-ft")
    assert "uid-ft (from realuid-0.92-0.94)" in " ".join(second.stdout.split())


def test_budget_bindings_come_after_the_time_limit_and_replace_it():
    assert cifar_table.budget_binds(0, "off") == []
    assert cifar_table.budget_binds(400, "reduce-overhead") == [
        "TrainingLoop.steps = 400", "TrainingLoop.time_limit = 0", "TrainingLoop.compile_mode = 'reduce-overhead'"]
    assert cifar_table.budget_name(400, 120) == "400 steps" and cifar_table.budget_name(0, 120) == "120 s"
    assert cifar_table.budget_of({"cell": "uid", "seconds": 120.0}) == "120 s"
    assert cifar_table.budget_of({"cell": "teacher-nfe1"}) is None
