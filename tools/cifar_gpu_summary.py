"""Collect what tools/cifar_gpu_pipeline.sh measured into one JSON, register the trained models, pick the PNGs.

    python tools/cifar_gpu_summary.py --work runs/cifar_gpu_pipeline --out runs/cifar_gpu_pipeline_out

Reads ``WORK/phases.jsonl`` (each phase: name, exact command, seconds, exit
code), the run folders' ``metrics.jsonl``, ``WORK/eval/*.json`` (classifier FD
and images/s of every sampling), ``WORK/bench.json`` (images/s, TFLOP/s, MFU
and peak memory of each step kind) and the FD classifier's manifest; writes
``registry/<name>.toml`` for each trained model (checkpoint path and sha256,
recipe, command, metrics each with the command that measured it; and
``distributed = false`` with a note saying how to re-create the checkpoint,
since WORK is not kept in git) and ``OUT/summary.json`` holding all of it plus
the manifests' text, and copies the sample grids to ``OUT``. At most 8 files
go to ``OUT``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
from pathlib import Path

from realuid.checkpoints import load_checkpoint
from realuid.io import atomic_write_text
from realuid.models.registry import read_manifest, register_run

MODELS = {  # registry name: (run folder under WORK, eval-file prefix)
    "fm_cifar_teacher_small": ("fm_teacher", "teacher"),
    "uid_fm_cifar_small": ("uid", "uid"),
    "realuid_fm_cifar_small": ("realuid", "realuid"),
}
RECREATE = "bash tools/cifar_gpu_pipeline.sh"
NOT_DISTRIBUTED = ("The checkpoint is not distributed: it was written under {work}, which is not kept in git. "
                   "Re-create it with `" + RECREATE + "` (FD classifier, teacher and both students again; "
                   "the sha256 will differ); `command` is this model's phase alone.")
PNGS = {"teacher_nfe100.png": "teacher_nfe100", "teacher_nfe1.png": "teacher_nfe1", "uid_nfe1.png": "uid_nfe1",
        "realuid_nfe1.png": "realuid_nfe1"}


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mark_not_distributed(path: Path, work: Path) -> None:
    """Add ``distributed = false`` and a note saying how to re-create the checkpoint to a manifest.

    The two keys go before the first table, so that they stay top-level keys.
    """
    lines = path.read_text().splitlines()
    first_table = next((i for i, line in enumerate(lines) if line.lstrip().startswith("[")), len(lines))
    while first_table > 0 and not lines[first_table - 1].strip():
        first_table -= 1
    keys = ["distributed = false", f"note = {json.dumps(NOT_DISTRIBUTED.format(work=work))}"]
    text = "\n".join([f"# Not distributed: re-create with `{RECREATE}`.", *lines[:first_table], *keys,
                      *lines[first_table:]])
    atomic_write_text(path, text + "\n")
    read_manifest(path)   # still a valid manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--registry", type=Path, default=Path("registry"))
    args = parser.parse_args(argv)
    work, out = args.work, args.out
    out.mkdir(parents=True, exist_ok=True)

    import torch

    summary: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
                     "torch": torch.__version__, "python": platform.python_version(),
                     "phases": read_jsonl(work / "phases.jsonl"), "settings": {}}
    settings = work / "settings.json"
    if settings.is_file():
        summary["settings"] = json.loads(settings.read_text())

    # the FD classifier
    clf_manifest = work / "registry" / "fd_classifier.toml"
    if clf_manifest.is_file():
        m = read_manifest(clf_manifest)
        summary["fd_classifier"] = {"test_accuracy": m.metrics.get("test_accuracy", {}).get("value"),
                                    "metrics": {k: v["value"] for k, v in m.metrics.items()},
                                    "checkpoint": m.checkpoint, "command": m.command}

    # evaluations: classifier FD and sampling speed
    evals = {}
    for path in sorted((work / "eval").glob("*.json")):
        info = json.loads(path.read_text())
        evals[path.stem] = {"fd_classifier": info.get("metrics", {}).get("fd_classifier"),
                            "precision_classifier": info.get("metrics", {}).get("precision_classifier"),
                            "recall_classifier": info.get("metrics", {}).get("recall_classifier"),
                            "nfe": info.get("nfe"), "num": info.get("num"), "images_per_s": info.get("images_per_s"),
                            "seconds": info.get("seconds"), "command": info.get("command")}
    summary["evaluations"] = evals
    summary["fd_table"] = {k: v["fd_classifier"] for k, v in evals.items()}

    # training runs
    runs = {}
    for name, (folder, _) in MODELS.items():
        rows = read_jsonl(work / folder / "metrics.jsonl")
        info = json.loads((work / folder / "run.json").read_text()) if (work / folder / "run.json").is_file() else {}
        if not rows:
            continue
        last = rows[-1]
        batch = summary["settings"].get("batch")
        steps_per_s = last["step"] / max(last.get("wall_time", 0) or 1e-9, 1e-9)
        ckpts = sorted((work / folder / "checkpoints").glob("step_*.pt"))
        parameters = None
        if ckpts:
            ema = load_checkpoint(ckpts[-1])["ema"]
            parameters = sum(v.numel() for k, v in ema.items() if k.startswith("model.") and v.is_floating_point())
        runs[name] = {"parameters": parameters, "rows": rows, "final": last, "steps": last["step"],
                      "train_seconds": last.get("wall_time"),
                      "steps_per_s": round(steps_per_s, 3),
                      "images_per_s": None if batch is None else round(steps_per_s * batch, 1),
                      "peak_memory_gib": max((r.get("peak_memory_gib") or 0) for r in rows) or None,
                      "command": shlex.join(["realuid", *info.get("argv", [])[1:]])}
    summary["runs"] = runs
    if (work / "bench.json").is_file():
        summary["bench"] = json.loads((work / "bench.json").read_text())

    # manifests: one per trained model, metrics with the command that measured them
    manifests = {}
    for name, (folder, prefix) in MODELS.items():
        run_dir = work / folder
        if not (run_dir / "checkpoints").is_dir():
            continue
        metrics = {}
        for key, ev in evals.items():
            if key.startswith(prefix + "_") and ev["fd_classifier"] is not None:
                metrics[f"fd_classifier_{key[len(prefix) + 1:]}"] = {"value": ev["fd_classifier"],
                                                                     "command": ev["command"]}
        manifest = register_run(name, run_dir, metrics=metrics, folder=args.registry)
        mark_not_distributed(manifest.file, work)
        manifests[name] = manifest.file.read_text()
    if clf_manifest.is_file():
        target = args.registry / "fd_classifier.toml"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(clf_manifest, target)
        mark_not_distributed(target, work)
        manifests["fd_classifier"] = target.read_text()
    summary["manifests"] = manifests

    copied = []
    for name, key in PNGS.items():
        source = work / "grids" / f"{key}.png"
        if source.is_file():
            shutil.copy(source, out / name)
            copied.append(name)
    teacher_grid = work / "fm_teacher" / "samples.png"
    if teacher_grid.is_file():
        shutil.copy(teacher_grid, out / "teacher_training_eval.png")
        copied.append("teacher_training_eval.png")
    summary["pngs"] = copied
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    print("FD (classifier features):", json.dumps(summary["fd_table"], indent=1))
    if "fd_classifier" in summary:
        print("FD classifier test accuracy:", summary["fd_classifier"]["test_accuracy"])
    for name, r in runs.items():
        print(f"{name}: {r['parameters']} parameters, {r['steps']} steps in {r['train_seconds']} s, "
              f"{r['images_per_s']} images/s, "
              f"peak {r['peak_memory_gib']} GiB")
    print(f"wrote {out / 'summary.json'} and {', '.join(copied)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
