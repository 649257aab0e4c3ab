"""The model registry: one TOML manifest per trained model in ``registry/``, and loading trained models.

A manifest ``registry/NAME.toml`` (checkpoints themselves stay out of git)::

    name = "fm_cifar_teacher"
    kind = "teacher"                      # teacher | student | classifier
    recipe = "gin/fm_cifar_teacher.gin"
    command = "realuid run gin/fm_cifar_teacher.gin --out runs/fm_cifar_teacher"
    run = "runs/fm_cifar_teacher"
    checkpoint = "runs/fm_cifar_teacher/checkpoints/step_00020000.pt"
    sha256 = "3f5c..."
    step = 20000

    [metrics.fd_classifier_nfe100]
    value = 12.3
    command = "realuid sample fm_cifar_teacher --nfe 100 ... && realuid eval ..."

A metric may also be a bare number, measured by the manifest's ``command``
(the form ``tools/train_fd_classifier.py`` writes). Relative paths are relative
to the folder that holds ``registry/`` (the repository root).

A *source* names a trained model anywhere a command or recipe wants one:
a run folder, a checkpoint file, or a name looked up as a run folder under
each search folder (default ``runs/``) and then as ``registry/NAME.toml``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from realuid.checkpoints import latest_good, load_checkpoint

from realuid.io import atomic_write_text, sha256_file
from realuid.errors import UserError

KINDS = ("teacher", "student", "classifier")
REGISTRY_ENV = "REALUID_REGISTRY"
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def registry_dir() -> Path:
    """``$REALUID_REGISTRY``, else ``./registry``."""
    return Path(os.environ.get(REGISTRY_ENV) or "registry")


# -- a tiny TOML writer ----------------------------------------------------------------------------------------------
def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)   # JSON escapes are valid TOML basic-string escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to TOML")


def dumps_toml(data: dict, _prefix: str = "") -> str:
    """TOML text of a dict of scalars, lists of scalars and nested dicts (tables); None values are left out."""
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data.items()
             if v is not None and not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            name = f"{_prefix}{_toml_key(k)}"
            has_scalars = any(not isinstance(x, dict) and x is not None for x in v.values())
            if has_scalars or not v:
                lines += ["", f"[{name}]"]
            body = dumps_toml(v, name + ".")
            if body:
                lines.append(body)
    return "\n".join(lines).strip("\n") + ("\n" if not _prefix else "")


def loads_toml(text: str, where: str = "TOML text") -> dict:
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{where} is not valid TOML ({err})", where, "fix the file or write it again") from None


# -- manifests -------------------------------------------------------------------------------------------------------
@dataclass
class Manifest:
    """One registered model (module docstring)."""

    name: str
    kind: str
    checkpoint: str
    sha256: str = ""
    recipe: str = ""
    command: str = ""
    run: str = ""
    step: int | None = None
    created: str = ""
    metrics: dict = field(default_factory=dict)     # name -> {"value": float, "command": str}
    config: dict = field(default_factory=dict)
    distributed: bool = True                        # False: the weights are not shipped anywhere
    note: str = ""
    file: Path | None = None

    @property
    def root(self) -> Path:
        """The folder relative paths are relative to: the parent of the registry folder."""
        return (self.file.parent.parent if self.file is not None else Path.cwd())

    def resolve(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    @property
    def checkpoint_path(self) -> Path:
        return self.resolve(self.checkpoint)

    def to_dict(self) -> dict:
        data = {"name": self.name, "kind": self.kind, "recipe": self.recipe or None, "command": self.command or None,
                "run": self.run or None, "checkpoint": self.checkpoint, "sha256": self.sha256 or None,
                "step": self.step, "created": self.created or None,
                "distributed": None if self.distributed else False, "note": self.note or None}
        if self.config:
            data["config"] = dict(self.config)
        if self.metrics:
            data["metrics"] = {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in self.metrics.items()}
        return data

    def write(self, path: Path | None = None) -> Path:
        path = Path(path or self.file or registry_dir() / f"{self.name}.toml")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, dumps_toml(self.to_dict()))
        self.file = path
        return path


def read_manifest(path: Path) -> Manifest:
    """A manifest from its TOML file; a UserError naming the file when it is malformed."""
    path = Path(path)
    data = loads_toml(path.read_text(), str(path))
    missing = [k for k in ("name", "kind", "checkpoint") if k not in data]
    if missing:
        raise UserError(f"the manifest {path} lacks {', '.join(missing)}", str(path),
                        "give every manifest name, kind and checkpoint (see realuid/models/registry.py)")
    if data["kind"] not in KINDS:
        raise UserError(f"the manifest {path} has kind {data['kind']!r}", str(path),
                        f"use one of {', '.join(KINDS)}")
    metrics = {}
    for key, value in (data.get("metrics") or {}).items():
        if isinstance(value, dict):
            metrics[key] = {"value": value.get("value"), "command": value.get("command", data.get("command", ""))}
        else:
            metrics[key] = {"value": value, "command": data.get("command", "")}
    return Manifest(name=str(data["name"]), kind=str(data["kind"]), checkpoint=str(data["checkpoint"]),
                    sha256=str(data.get("sha256", "")), recipe=str(data.get("recipe", "")),
                    command=str(data.get("command", "")), run=str(data.get("run", "")), step=data.get("step"),
                    created=str(data.get("created", "")), metrics=metrics, config=dict(data.get("config") or {}),
                    distributed=bool(data.get("distributed", True)), note=str(data.get("note", "")), file=path)


def list_manifests(folder: Path | None = None) -> list[Manifest]:
    folder = Path(folder or registry_dir())
    if not folder.is_dir():
        return []
    return [read_manifest(p) for p in sorted(folder.glob("*.toml"))]


def find_manifest(name: str, folder: Path | None = None) -> Manifest | None:
    path = Path(folder or registry_dir()) / f"{name}.toml"
    return read_manifest(path) if path.is_file() else None


def register_run(name: str, source: str | Path, kind: str | None = None, recipe: str = "", command: str = "",
                 metrics: dict | None = None, folder: Path | None = None) -> Manifest:
    """Write ``registry/NAME.toml`` for the newest good checkpoint of a run folder (or a checkpoint file).

    ``metrics`` maps names to ``{"value", "command"}`` (or bare numbers). The
    checkpoint's sha256 and step are recorded; kind and recipe default to what
    the checkpoint and its run say.
    """
    source = Path(source)
    checkpoint, run_dir = _checkpoint_of(source, f"registry add {name}")
    state = load_checkpoint(checkpoint)
    meta = state.get("meta") or {}
    kind = kind or meta.get("kind") or "student"
    if kind not in KINDS:
        raise UserError(f"unknown model kind {kind!r}", "--kind", f"use one of {', '.join(KINDS)}")
    if run_dir is not None and not recipe:
        info = run_dir / "run.json"
        if info.is_file():
            run_info = json.loads(info.read_text())
            recipe = run_info.get("recipe") or ""
            if not command and run_info.get("argv"):
                command = shlex.join(["realuid", *run_info["argv"][1:]])
    folder = Path(folder or registry_dir())
    manifest = Manifest(name=name, kind=kind, checkpoint=_relative(checkpoint, folder.parent),
                        sha256=sha256_file(checkpoint), recipe=recipe, command=command,
                        run="" if run_dir is None else _relative(run_dir, folder.parent), step=int(state.get("step", 0)),
                        created=_dt.datetime.now().isoformat(timespec="seconds"),
                        metrics={k: v if isinstance(v, dict) else {"value": v, "command": command}
                                 for k, v in (metrics or {}).items()})
    manifest.write(folder / f"{name}.toml")
    return manifest


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(Path(path).resolve())


# -- sources ---------------------------------------------------------------------------------------------------------
@dataclass
class Resolved:
    """Where a source led: the checkpoint file, its run folder (if any) and its manifest (if any)."""

    checkpoint: Path
    run_dir: Path | None = None
    manifest: Manifest | None = None


def _checkpoint_of(path: Path, where: str) -> tuple[Path, Path | None]:
    """(checkpoint file, run folder) of a run folder or a checkpoint file."""
    if path.is_dir():
        found = latest_good(path / "checkpoints")
        if found is None:
            raise UserError(f"the run folder {path} has no usable checkpoint", where,
                            "point it at a run that reached its first checkpoint (or continue it with "
                            f"`realuid run --resume {path}`)")
        return found[0], path
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
        return path, run_dir
    raise UserError(f"{path} does not exist", where, "give a run folder or a checkpoint file")


def resolve_source(source: str | Path, where: str, search: tuple[str, ...] = ("runs",),
                   train_hint: str | None = None) -> Resolved:
    """A run folder, a checkpoint file, ``<search>/<name>`` or ``registry/<name>.toml``; a UserError otherwise.

    ``train_hint`` is the command that trains the model, printed when nothing is found.
    """
    path = Path(str(source))
    if path.exists():
        checkpoint, run_dir = _checkpoint_of(path, where)
        return Resolved(checkpoint, run_dir)
    name = str(source)
    for folder in search:
        candidate = Path(folder) / name
        if candidate.is_dir():
            checkpoint, run_dir = _checkpoint_of(candidate, where)
            return Resolved(checkpoint, run_dir)
    manifest = find_manifest(name) if _BARE_KEY.match(name) else None
    if manifest is not None:
        checkpoint = manifest.checkpoint_path
        if not checkpoint.is_file():
            how = manifest.command or train_hint or (f"realuid run {manifest.recipe}" if manifest.recipe else "")
            why = ("its weights are not distributed" + (f": {manifest.note}" if manifest.note else "")
                   if not manifest.distributed else "checkpoints are not kept in git")
            raise UserError(f"the checkpoint {checkpoint} of {manifest.name!r} (registered in {manifest.file}) is "
                            f"missing: {why}", where,
                            f"train it again with `{how}`, then `realuid registry add {manifest.name} RUN_FOLDER`"
                            if how else f"copy the checkpoint to {checkpoint}")
        if manifest.sha256 and sha256_file(checkpoint) != manifest.sha256:
            raise UserError(f"the checkpoint {checkpoint} does not match the sha256 in {manifest.file}", where,
                            f"restore the registered file, or register the new one with `realuid registry add "
                            f"{manifest.name} RUN_FOLDER`")
        return Resolved(checkpoint, None, manifest)
    looked = [str(path)] + [str(Path(f) / name) for f in search] + [str(registry_dir() / f"{name}.toml")]
    fix = (f"train it with `{train_hint}`" if train_hint else "train it with `realuid run RECIPE --out runs/NAME`")
    raise UserError(f"no trained model called {name!r} (looked for {', '.join(looked)})", where,
                    fix + "; or give an existing run folder, checkpoint file or registry name "
                          "(`realuid registry list`)")
