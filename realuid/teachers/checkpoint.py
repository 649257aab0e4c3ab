"""A trained teacher: the EMA network of a teacher-training run, from a run folder, checkpoint, registry name or export."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from torch import nn

from realuid.context import RunContext
from realuid.checkpoints import load_checkpoint
from realuid.errors import warn
from realuid.models.export import WEIGHTS_FILE, is_export_folder, load_weights, network_spec, read_config
from realuid.models.loading import ema_weights
from realuid.models.registry import resolve_source
from realuid.errors import UserError
from realuid.components import get, register
from realuid.sampling import guided


@register("teacher")
class CheckpointTeacher(nn.Module):
    """Trained teacher f* from a MatchingTrainer checkpoint (EMA weights, weights_only=True) or a teacher export.

    ``f*(x_t, t, c) = path.apply_network(network, x_t, t, c)`` read in the
    parameterisation the teacher was trained in (recorded in its checkpoint),
    with classifier-free guidance ``f_u + s (f_c - f_u)`` when ``guidance != 1``
    (Ho & Salimans 2022). The architecture is the ``network`` binding: give it
    the bindings of the teacher's recipe (the CIFAR recipes share one ``UNet``
    configuration, so teacher, generator and fake model agree and
    ``generator_init = 'teacher'`` can copy the weights).

    ``source`` is looked up as: an existing export folder (``realuid export
    TEACHER_RUN --out DIR``, float32 or bfloat16 weights, cast to the network's
    dtype; its config.json stands for the checkpoint's record of path, shape,
    classes, parameterisation and network); an existing run folder or ``.pt``
    file; a run folder ``<search folder>/<source>``; ``registry/<source>.toml``. When none
    exists the error prints the command that trains it
    (``realuid run <recipe> <train_flags> --out <first search folder>/<source>``)
    and the one that imports a published checkpoint instead
    (``realuid import <import_format> CKPT.pt --recipe <recipe> --out ...``).
    With ``train_missing`` (``realuid run --smoke`` binds it) that training
    command is run first, in a subprocess, and the teacher it writes is loaded.

    Args:
        network: the backbone (same architecture as the trained one).
        source: export folder, run folder, checkpoint file, or name.
        recipe: the recipe that trains this teacher (for the error message); a relative path is
            looked up from the working folder, then from the realuid checkout.
        search: folders in which ``source`` may name a run folder.
        train_flags: extra flags of the printed training command (the smoke preset adds ``--smoke``).
        guidance: classifier-free guidance scale for a class-conditional teacher (1 = none).
        allow_random_init: keep the untrained network when nothing is found, with a warning
            (benchmarks of speed only; never for results).
        train_missing: when nothing called ``source`` exists, train it first with the printed command
            (``realuid run <recipe> <train_flags> --out <first search folder>/<source>``) and load it.
            Meant for the smoke preset, where that takes seconds; off by default.
        import_format: the ``realuid import`` format of published checkpoints of this teacher
            (``'torchcfm'`` for the flow-matching CIFAR-10 teacher), for the error message.
    """

    def __init__(self, network: nn.Module, source: str | None = None, recipe: str = "gin/fm_cifar_teacher.gin",
                 search: tuple[str, ...] = ("runs",), train_flags: str = "", guidance: float = 1.0,
                 allow_random_init: bool = False, train_missing: bool = False, import_format: str | None = None):
        super().__init__()
        self.network, self.guidance, self.path = network, float(guidance), None
        self.source = source
        self.meta: dict = {}
        self.parameterization: str | None = None
        if source is None:
            raise UserError("CheckpointTeacher.source is not set", "CheckpointTeacher.source",
                            "bind it to a run folder, a checkpoint file or a registry name, e.g. "
                            "CheckpointTeacher.source = 'fm_cifar_teacher'")
        where = f"CheckpointTeacher.source = {source!r}"
        out = f"{search[0]}/{source}" if search else f"runs/{source}"
        hint = " ".join(part for part in ("realuid run", recipe, train_flags, "--out", out) if part)
        if is_export_folder(source):
            self._load_export(Path(source), where)
            return
        missing = _missing(source, tuple(search))
        if missing and train_missing:
            _train(recipe, train_flags, out, hint, where)
        try:
            resolved = resolve_source(source, where, tuple(search), hint)
        except UserError as err:
            if missing and err.fix:
                err.fix = (err.fix.rstrip(".") + "; or import a published checkpoint with `realuid import "
                           f"{import_format or 'FORMAT'} CKPT.pt --recipe {recipe} --out {out}`")
            if not allow_random_init:
                raise
            warn(f"no trained teacher {source!r}: CheckpointTeacher.allow_random_init keeps an UNTRAINED network "
                 "(for speed measurements only)")
            self.checkpoint = None
            return
        self.checkpoint = resolved.checkpoint
        state = load_checkpoint(resolved.checkpoint, map_location="cpu")
        self.meta = state.get("meta") or {}
        if self.meta.get("kind", "teacher" if "network" in state else "student") != "teacher":
            raise UserError(f"{resolved.checkpoint} holds a one-step student, not a teacher", where,
                            "point CheckpointTeacher.source at a teacher-training run (MatchingTrainer)")
        self.parameterization = self.meta.get("parameterization")
        _check_same_network(self.meta.get("network"), network_spec("CheckpointTeacher"), resolved.checkpoint, where)
        try:
            self.network.load_state_dict(ema_weights(state))
        except RuntimeError as err:
            trained = _network_lines(self.meta.get("config", ""))
            raise UserError(f"the teacher checkpoint {resolved.checkpoint} does not fit the network bound to "
                            f"CheckpointTeacher.network ({str(err).splitlines()[0][:200]})", where,
                            "bind the architecture the teacher was trained with" +
                            (f"; its run used: {trained}" if trained else "")) from None

    def _load_export(self, folder: Path, where: str) -> None:
        """The weights of a teacher export folder; its config.json gives what a checkpoint's meta would."""
        config = read_config(folder, where)
        if config["kind"] != "teacher":
            raise UserError(f"the export folder {folder} holds a one-step student, not a teacher", where,
                            "point CheckpointTeacher.source at a teacher's export (`realuid export TEACHER_RUN --out "
                            "DIR`) or its run folder")
        path_name = config["path"]["name"]
        try:
            path_name = get(path_name).cls.__name__
        except UserError:
            pass   # an unknown path: attach() names it against the recipe's
        self.checkpoint = folder / WEIGHTS_FILE
        self.meta = {"kind": "teacher", "path": path_name, "shape": config["shape"],
                     "num_classes": int(config.get("num_classes") or 0), "network": config["backbone"],
                     "parameterization": config["parameterization"]}
        self.parameterization = config["parameterization"]
        _check_same_network(config["backbone"], network_spec("CheckpointTeacher"), self.checkpoint, where)
        load_weights(folder, self.network, config, "network",
                     f"the {type(self.network).__name__} bound to CheckpointTeacher.network")

    def attach(self, context: RunContext) -> "CheckpointTeacher":
        """Check that the student's path and data match the teacher's; attach the path."""
        path, data = context.path, context.data
        where = f"CheckpointTeacher vs {context.owner}"
        trained_path = self.meta.get("path")
        if trained_path and trained_path != type(path).__name__:
            raise UserError(f"the teacher was trained on the path {trained_path}, the recipe distils on "
                            f"{type(path).__name__}", where, f"use {context.where('path')} = @{trained_path}() "
                            "with the teacher's settings")
        shape = tuple(self.meta.get("shape") or data.shape)
        if shape != tuple(data.shape):
            raise UserError(f"the teacher was trained on data of shape {shape}, the recipe's data have "
                            f"{tuple(data.shape)}", where, "distil on the data the teacher was trained on")
        classes = int(self.meta.get("num_classes", data.num_classes))
        if data.num_classes and not classes:
            raise UserError("the recipe's data are class-conditional but the teacher is not", where,
                            "use a class-conditional teacher (a *_cond recipe) or unconditional data")
        self.parameterization = self.parameterization or context.parameterization
        path.check_parameterization(self.parameterization, "CheckpointTeacher")
        self.path = path
        return self

    def forward(self, x_t, t, cond=None):
        def field(x, s, c=None):
            return self.path.apply_network(self.network, x, s, c, self.parameterization)

        return guided(field, self.guidance)(x_t, t, cond)


def _missing(source: str, search: tuple[str, ...]) -> bool:
    """Whether nothing called ``source`` exists: no such path, no run folder in ``search``, no manifest."""
    from realuid.models.registry import registry_dir

    name = str(source)
    return not (Path(name).exists() or any((Path(folder) / name).exists() for folder in search)
                or (registry_dir() / f"{name}.toml").is_file())


def _train(recipe: str, train_flags: str, out: str, hint: str, where: str) -> None:
    """Run ``realuid run RECIPE TRAIN_FLAGS --out OUT`` in a subprocess (``CheckpointTeacher.train_missing``).

    A subprocess, not :func:`realuid.engine.runner.run` in this process: this
    teacher is being built while gin builds the student's trainer, and a
    nested run would clear and re-parse the one global gin config under it.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("CheckpointTeacher.train_missing does not train a teacher under torchrun (every rank "
                        "would)", where, f"train it first with `{hint}`")
    recipe_file = Path(recipe)
    if not recipe_file.is_file() and not recipe_file.is_absolute():
        checkout = Path(__file__).resolve().parents[2] / recipe
        recipe_file = checkout if checkout.is_file() else recipe_file
    if not recipe_file.is_file():
        raise UserError(f"the teacher's recipe {recipe} does not exist (looked for it from {Path.cwd()} and in the "
                        "realuid checkout)", "CheckpointTeacher.recipe", "bind CheckpointTeacher.recipe to the "
                        "path of the recipe that trains the teacher")
    command = [sys.executable, "-m", "realuid", "run", str(recipe_file), *shlex.split(train_flags), "--out", out,
               "--no-progress"]
    print(f"no teacher at {out} yet: training it first (CheckpointTeacher.train_missing): {hint}", file=sys.stderr,
          flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:   # the child's own "error: WHAT. Where: W. Fix: F." becomes this error's parts
        lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        what, _, rest = (errors[-1][len("error:"):].strip() if errors else " ".join(lines[-3:])).partition(
            ". Where: ")
        child_where, _, child_fix = rest.partition(". Fix: ")
        fix = child_fix.rstrip(".") + "; then " if child_fix else f"run `{hint}` yourself to see why; then "
        raise UserError(f"training the missing teacher with `{hint}` failed (exit {result.returncode}): "
                        f"{what.rstrip('.') or '(no output)'}"[:800], child_where or where,
                        fix + "start this run again")


def _network_lines(config: str) -> str:
    """The network bindings of a run's config.gin, on one line (for error messages)."""
    lines = [line.strip() for line in config.splitlines()
             if line.strip() and not line.startswith("#") and line.split(".")[0].split("/")[-1] in ("UNet", "DiT")]
    return "; ".join(lines)[:600]


def _check_same_network(recorded: dict | None, bound: dict | None, checkpoint, where: str) -> None:
    """Refuse a recipe that builds the teacher's network with other arguments than it was trained with.

    Weights do not show every argument (a time scale, the number of attention
    heads): loading them into a network built differently would succeed and
    compute another function. Dropout rates are left out (the teacher runs in
    eval mode), and a network may say which other arguments are inert
    (``functional_arguments``). Checkpoints that record no network (older ones)
    are not checked.
    """
    if not recorded or not bound:
        return
    if recorded.get("name") != bound.get("name"):
        raise UserError(f"the teacher {checkpoint} is a {recorded.get('name')}, CheckpointTeacher.network builds a "
                        f"{bound.get('name')}", where, f"bind CheckpointTeacher.network = @{recorded.get('name')}()")
    theirs, ours = recorded.get("kwargs") or {}, bound.get("kwargs") or {}
    functional = getattr(get(recorded["name"]).cls, "functional_arguments", None)
    if functional is not None:   # the network says which arguments change the function of its weights
        theirs, ours = functional(theirs), functional(ours)
    differ = [k for k in theirs if k in ours and "dropout" not in k and _normal(theirs[k]) != _normal(ours[k])]
    if differ:
        name = recorded["name"]
        listed = "; ".join(f"{name}.{k}: trained with {theirs[k]!r}, this recipe builds {ours[k]!r}" for k in differ)
        raise UserError(f"the teacher {checkpoint} was trained with another {name} than the recipe builds ({listed})",
                        where, "bind " + ", ".join(f"{name}.{k} = {theirs[k]!r}" for k in differ)
                        + " (for every network that copies the teacher's weights)")


def _normal(value):
    """Lists and tuples compare equal (gin reads (1, 2) and JSON gives [1, 2])."""
    return [_normal(v) for v in value] if isinstance(value, (list, tuple)) else value
