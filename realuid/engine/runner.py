"""Starting and resuming runs: the run folder of DESIGN §8.

``RUN/config.gin``     the operative gin config (every parameter the run used)
``RUN/run.json``       seed, user imports, command line, versions
``RUN/metrics.jsonl``  one JSON object per evaluation
``RUN/checkpoints/``   atomic, checksummed, resumable checkpoints
``RUN/samples.npy``    final generator samples (vector data), ``RUN/samples.png`` a picture of them
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import gin
import torch

import realuid
from realuid.config import call_configured, import_modules, parse_recipe
from realuid.engine.checkpoint import atomic_write_text
from realuid.errors import UserError


@gin.configurable("experiment")
def experiment(trainer=gin.REQUIRED):
    """The recipe's choice of trainer class (``experiment.trainer = @DistillationTrainer``)."""
    return trainer


def default_out_dir(recipe: Path) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{Path(recipe).stem}-{stamp}"


def _check_writable(out: Path) -> None:
    probe = out.parent if not out.exists() else out
    while not probe.exists():
        probe = probe.parent
    try:
        test = probe / f".realuid-write-test-{id(out)}"
        test.write_text("")
        test.unlink()
    except OSError as err:
        raise UserError(f"cannot write the run folder {out} ({err.strerror})", "--out",
                        "choose a folder you can write to") from None


def build(recipe: Path | str | None, binds: Sequence[str] = (), imports: Sequence[str] = (),
          out: Path | str | None = None, seed: int = 0, resume: bool = False, overwrite: bool = False,
          progress: bool = True):
    """Parse the recipe and build the trainer; nothing is written until everything is valid."""
    if resume:
        out = Path(out)
        if not (out / "config.gin").is_file():
            raise UserError(f"{out} is not a run folder (no config.gin)", "--resume",
                            "give the folder a previous `realuid run` wrote")
        meta = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
        imports = list(meta.get("imports", [])) + list(imports)
        seed = meta.get("seed", seed)
        import_modules(imports)
        parse_recipe(None, binds, config_text=(out / "config.gin").read_text())
    else:
        out = Path(out) if out is not None else default_out_dir(Path(recipe or "run"))
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise UserError(f"the run folder {out} already exists and is not empty", "--out",
                            "pass --resume to continue it, --overwrite to replace it, or another --out")
        _check_writable(out)
        import_modules(imports)
        parse_recipe(recipe, binds)
    torch.manual_seed(seed)
    trainer_cls = call_configured(experiment)
    trainer = call_configured(trainer_cls, out_dir=out, seed=seed)
    trainer.show_progress = trainer.show_progress and progress
    return trainer, {"seed": seed, "imports": list(imports), "out": str(out)}


def write_run_files(trainer, meta: dict, recipe, binds: Sequence[str], overwrite: bool, resume: bool) -> None:
    out = Path(meta["out"])
    if overwrite and out.exists() and not resume:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        return
    atomic_write_text(out / "config.gin", gin.operative_config_str())
    info = {**meta, "recipe": None if recipe is None else str(recipe), "bindings": list(binds),
            "argv": sys.argv, "started": _dt.datetime.now().isoformat(timespec="seconds"),
            "versions": {"realuid": realuid.__version__, "torch": torch.__version__,
                         "python": platform.python_version()}}
    atomic_write_text(out / "run.json", json.dumps(info, indent=2) + "\n")


def run(recipe: Path | str | None, binds: Sequence[str] = (), imports: Sequence[str] = (),
        out: Path | str | None = None, seed: int = 0, resume: bool = False, overwrite: bool = False,
        progress: bool = True):
    """Build, write the run folder, train; returns the trainer (its last metrics in ``trainer.log``)."""
    trainer, meta = build(recipe, binds, imports, out, seed, resume, overwrite, progress)
    write_run_files(trainer, meta, recipe, binds, overwrite, resume)
    trainer.fit(resume=resume)
    return trainer
