"""A trained teacher: the EMA network of a teacher-training run, loaded from a run folder, checkpoint or registry."""

from __future__ import annotations

from torch import nn

from realuid.context import RunContext
from realuid.checkpoints import load_checkpoint
from realuid.errors import warn
from realuid.models.loading import ema_weights
from realuid.models.registry import resolve_source
from realuid.errors import UserError
from realuid.components import register
from realuid.sampling import guided


@register("teacher")
class CheckpointTeacher(nn.Module):
    """Trained teacher f* from a MatchingTrainer checkpoint (EMA weights, weights_only=True), by run, file or registry name.

    ``f*(x_t, t, c) = path.apply_network(network, x_t, t, c)`` read in the
    parameterisation the teacher was trained in (recorded in its checkpoint),
    with classifier-free guidance ``f_u + s (f_c - f_u)`` when ``guidance != 1``
    (Ho & Salimans 2022). The architecture is the ``network`` binding: give it
    the bindings of the teacher's recipe (the CIFAR recipes share one ``UNet``
    configuration, so teacher, generator and fake model agree and
    ``generator_init = 'teacher'`` can copy the weights).

    ``source`` is looked up as: an existing run folder or ``.pt`` file; a run
    folder ``<search folder>/<source>``; ``registry/<source>.toml``. When none
    exists the error prints the command that trains it
    (``realuid run <recipe> <train_flags> --out <first search folder>/<source>``).

    Args:
        network: the backbone (same architecture as the trained one).
        source: run folder, checkpoint file, or name.
        recipe: the recipe that trains this teacher (for the error message).
        search: folders in which ``source`` may name a run folder.
        train_flags: extra flags of the printed training command (the smoke preset adds ``--smoke``).
        guidance: classifier-free guidance scale for a class-conditional teacher (1 = none).
        allow_random_init: keep the untrained network when nothing is found, with a warning
            (benchmarks of speed only; never for results).
    """

    def __init__(self, network: nn.Module, source: str | None = None, recipe: str = "gin/fm_cifar_teacher.gin",
                 search: tuple[str, ...] = ("runs",), train_flags: str = "", guidance: float = 1.0,
                 allow_random_init: bool = False):
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
        try:
            resolved = resolve_source(source, where, tuple(search), hint)
        except UserError:
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
        try:
            self.network.load_state_dict(ema_weights(state))
        except RuntimeError as err:
            trained = _network_lines(self.meta.get("config", ""))
            raise UserError(f"the teacher checkpoint {resolved.checkpoint} does not fit the network bound to "
                            f"CheckpointTeacher.network ({str(err).splitlines()[0][:200]})", where,
                            "bind the architecture the teacher was trained with" +
                            (f"; its run used: {trained}" if trained else "")) from None

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


def _network_lines(config: str) -> str:
    """The network bindings of a run's config.gin, on one line (for error messages)."""
    lines = [line.strip() for line in config.splitlines()
             if line.strip() and not line.startswith("#") and line.split(".")[0].split("/")[-1] in ("UNet", "DiT")]
    return "; ".join(lines)[:600]
