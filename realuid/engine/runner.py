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
import os
import platform
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import gin
import torch

import realuid
from realuid.config import absolute_imports, call_configured, import_modules, parse_recipe
from realuid.checkpoints import checkpoints
from realuid.io import atomic_write_text
from realuid.engine.loop import TrainingLoop
from realuid.errors import UserError


@gin.configurable("experiment")
def experiment(trainer=gin.REQUIRED):
    """The recipe's choice of trainer class (``experiment.trainer = @DistillationTrainer``)."""
    return trainer


def default_out_dir(recipe: Path) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{Path(recipe).stem}-{stamp}"


def _check_writable(out: Path) -> None:
    """The nearest existing ancestor of ``out`` must be a folder we can create files in."""
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"cannot create the run folder {out}: {probe} is a file, not a folder", "--out",
                        "choose an --out path whose parents are folders")
    try:
        test = probe / f".realuid-write-test-{os.getpid()}"
        test.write_text("")
        test.unlink()
    except OSError as err:
        raise UserError(f"cannot write the run folder {out} ({err.strerror or err} in {probe})", "--out",
                        "choose a folder you can write to (check permissions and free space)") from None


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` looks like a folder `realuid run` wrote (config.gin or run.json inside)."""
    return (folder / "config.gin").is_file() or (folder / "run.json").is_file()


def _check_fresh_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file, not a folder", "--out",
                        "give the path of a new (or empty) folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"the run folder {out} already exists and is not empty", "--out",
                            "pass --resume to continue it, --overwrite to replace it, or another --out")
        if not is_run_folder(out):
            raise UserError(f"--overwrite would delete {out}, which is not a realuid run folder (it has no "
                            "config.gin or run.json)", "--out",
                            "choose another --out, or empty that folder yourself")
    _check_writable(out)


def _read_run_json(out: Path) -> dict:
    path = out / "run.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err})", "--resume",
                        "restore run.json (it holds the seed and imports of the run) or start afresh") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} does not hold a JSON object", "--resume", "restore run.json or start afresh")
    return meta


def _recorded_imports(meta: dict, path: Path) -> list[str]:
    """The ``imports`` list of a run.json (``path``): module names and .py paths."""
    imports = meta.get("imports", [])
    if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
        raise UserError(f"{path} records imports {imports!r}, not a list of module names or .py paths", "--resume",
                        "restore run.json, or fix its \"imports\" entry (e.g. [\"/abs/path/my_paths.py\"])")
    return imports


def _resume_imports(recorded: Sequence[str], given: Sequence[str], run_json: Path) -> list[str]:
    """The imports of a resumed run: those its run.json records, then any new ``--import``.

    A fresh run records a .py file as its absolute path, so a resume from any
    folder finds it. A recorded file that is missing (moved, or a relative path
    that an older realuid recorded) is replaced by a ``--import`` file of the
    same name; without one the resume is refused with how to fix it.
    """
    given = absolute_imports(given)
    imports: list[str] = []
    for name in recorded:
        if name.endswith(".py"):
            name = _recorded_file(name, given, run_json)
        if name not in imports:
            imports.append(name)
    return imports + [g for g in given if g not in imports]


def _recorded_file(name: str, given: Sequence[str], run_json: Path) -> str:
    """The absolute path of a recorded .py import: the file itself, else a given .py file of the same name."""
    if Path(name).is_file():
        return str(Path(name).resolve())
    stand_ins = [g for g in given if g.endswith(".py") and Path(g).name == Path(name).name]
    if stand_ins:
        return stand_ins[0]
    relative = not Path(name).is_absolute()
    raise UserError(f"the run imports {name}, which does not exist"
                    + (f" (a relative path, looked up from {Path.cwd()})" if relative else ""),
                    f"{run_json} (imports)",
                    f"pass --import with the file's current path, e.g. --import path/to/{Path(name).name}"
                    + ("; or resume from the folder the run was started in" if relative else ""))


def _check_binds_take_effect(binds: Sequence[str], config_text: str) -> None:
    """Refuse an unscoped ``--bind Name.param = v`` on resume when the run's config binds ``scope/Name.param``.

    gin gives the scoped binding precedence inside its scope, so the new value
    would be silently ignored there (e.g. ``MLP.hidden`` against the saved
    ``generator/MLP.hidden``).
    """
    for bind in binds:
        key = bind.split("=", 1)[0].strip()
        if "=" not in bind or "/" in key or "." not in key:
            continue
        scoped = sorted(set(re.findall(rf"^\s*([\w./]+)/{re.escape(key)}\s*=", config_text, re.M)))
        if scoped:
            names = ", ".join(f"{scope}/{key}" for scope in scoped)
            raise UserError(f"--bind {bind!r} would not take effect: the run's config.gin binds {names}, which "
                            "takes precedence in its scope", "--bind (with --resume)",
                            f"bind the scoped name instead, e.g. --bind '{scoped[0]}/{bind.strip()}'")


def build(recipe: Path | str | None, binds: Sequence[str] = (), imports: Sequence[str] = (),
          out: Path | str | None = None, seed: int | None = None, resume: bool = False, overwrite: bool = False,
          progress: bool = True):
    """Parse the recipe and build the trainer and its loop; nothing is written until everything is valid.

    A fresh run needs a new or empty ``out`` (or ``overwrite`` of a previous
    run folder). ``resume`` rebuilds the run from ``out/config.gin`` and
    ``out/run.json`` (seed and imports), plus any extra ``binds``.
    """
    if resume:
        if overwrite:
            raise UserError("--resume and --overwrite contradict each other", "--resume/--overwrite",
                            "pass --resume DIR to continue a run, or --overwrite --out DIR to start it again")
        if recipe is not None:
            raise UserError(f"a recipe ({recipe}) and --resume were both given; a resumed run uses the config.gin "
                            "saved in its folder", "RECIPE argument / --resume",
                            "drop the recipe (extra --bind values are still applied)")
        out = Path(out)
        if not out.is_dir():
            raise UserError(f"the run folder {out} does not exist", "--resume",
                            "give the folder of a previous run (see runs/)")
        if not (out / "config.gin").is_file():
            raise UserError(f"{out} is not a run folder (no config.gin)", "--resume",
                            "give the folder a previous `realuid run` wrote")
        meta = _read_run_json(out)
        imports = _resume_imports(_recorded_imports(meta, out / "run.json"), imports, out / "run.json")
        saved_seed = meta.get("seed", 0 if seed is None else seed)
        if seed is not None and seed != saved_seed:
            raise UserError(f"--seed {seed} differs from the seed {saved_seed} the run started with", "--seed",
                            "drop --seed when resuming (the run's own seed is used)")
        seed = saved_seed
        import_modules(imports)
        config_text = (out / "config.gin").read_text()
        _check_binds_take_effect(binds, config_text)
        parse_recipe(None, binds, config_text=config_text)
    else:
        seed = 0 if seed is None else seed
        if out is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError("a run under torchrun needs --out (each process would stamp its own default folder)",
                            "--out", "pass --out DIR")
        out = Path(out) if out is not None else default_out_dir(Path(recipe or "run"))
        if int(os.environ.get("RANK", "0")) == 0:   # under torchrun rank 0 alone owns the folder
            _check_fresh_out(out, overwrite)
        import_modules(imports)
        imports = absolute_imports(imports)   # recorded so: --resume works from any folder
        parse_recipe(recipe, binds)
    torch.manual_seed(seed)   # network initialisation while gin builds the trainer
    trainer_cls = call_configured(experiment)
    trainer = call_configured(trainer_cls)
    loop = call_configured(TrainingLoop, trainer=trainer, out_dir=out, seed=seed)
    loop.show_progress = loop.show_progress and progress
    return loop, {"seed": seed, "imports": list(imports), "out": str(out)}


def write_run_files(meta: dict, recipe, binds: Sequence[str], overwrite: bool, resume: bool) -> None:
    """Create the run folder with config.gin and run.json (on resume: note the resume in run.json)."""
    out = Path(meta["out"])
    now = _dt.datetime.now().isoformat(timespec="seconds")
    if resume:
        info = _read_run_json(out)
        info.setdefault("resumes", []).append({"bindings": list(binds), "argv": sys.argv, "time": now})
        info["imports"] = list(meta["imports"])   # with new --import values and moved files' new paths
        if binds:  # extra bindings change the run: keep config.gin operative for the next resume
            atomic_write_text(out / "config.gin", gin.operative_config_str())
        atomic_write_text(out / "run.json", json.dumps(info, indent=2) + "\n")
        return
    if overwrite and out.exists():
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the run folder {out} ({err.strerror or err})", "--out",
                        "choose a folder you can write to") from None
    atomic_write_text(out / "config.gin", gin.operative_config_str())
    info = {**meta, "recipe": None if recipe is None else str(recipe), "bindings": list(binds),
            "argv": sys.argv, "started": now,
            "versions": {"realuid": realuid.__version__, "torch": torch.__version__,
                         "python": platform.python_version()}}
    atomic_write_text(out / "run.json", json.dumps(info, indent=2) + "\n")


def _remove_run_files(folder: Path, keep_folder: bool) -> None:
    if not keep_folder:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def run(recipe: Path | str | None, binds: Sequence[str] = (), imports: Sequence[str] = (),
        out: Path | str | None = None, seed: int | None = None, resume: bool = False, overwrite: bool = False,
        progress: bool = True):
    """Build, write the run folder, train; returns the loop (its metrics in ``loop.log``, its trainer in ``loop.trainer``).

    A fresh run that fails before writing its first checkpoint leaves no run
    folder behind (it could only mislead: there is nothing to resume).
    """
    loop, meta = build(recipe, binds, imports, out, seed, resume, overwrite, progress)
    folder = Path(meta["out"])
    existed = folder.is_dir()
    main_process = int(os.environ.get("RANK", "0")) == 0   # under torchrun rank 0 alone writes files
    if resume:   # a checkpoint that does not fit the config is refused before the run folder is touched
        loop.resume()
    if main_process:
        write_run_files(meta, recipe, binds, overwrite, resume)
    try:
        loop.fit()
    except BaseException as err:
        if main_process and not resume and not checkpoints(folder / "checkpoints"):
            _remove_run_files(folder, keep_folder=existed)
            if isinstance(err, UserError):
                err.what = (err.what.rstrip(".") + f". No checkpoint had been written, so the run folder {folder} "
                            f"was {'emptied' if existed else 'removed'}")
                if err.fix:
                    err.fix = err.fix.replace("continue from the last checkpoint with --resume", "start the run again")
        raise
    finally:
        loop.dist.close()
    return loop
