"""Loading a trained model: a teacher (EMA field) or student (EMA generator) with its path, ready to sample.

From a run folder, a checkpoint file or a registry name (the run's gin config
rebuilds the architecture), or from an export folder (``config.json`` +
``model.safetensors``, :mod:`realuid.models.export`; no gin).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from realuid.checkpoints import load_checkpoint
from realuid.context import RunContext
from realuid.errors import UserError
from realuid.models.registry import resolve_source


def ema_weights(state: dict, prefix: str = "model.") -> dict:
    """The EMA model's weights of a checkpoint state (keys without the ``model.`` prefix)."""
    return {k[len(prefix):]: v for k, v in state["ema"].items() if k.startswith(prefix)}


@dataclass
class TrainedModel:
    """A trained teacher (a field and its path) or student (a one-step generator), ready to sample."""

    kind: str
    module: object
    path: object
    parameterization: str
    shape: tuple
    num_classes: int
    checkpoint: Path
    step: int
    source: str


def _build_from_config(config_text: str, names: dict[str, str]) -> dict:
    """Parse a run's operative config and build the objects bound to ``names`` (e.g. 'MatchingTrainer.network')."""
    import gin

    from realuid.config import parse_recipe, translate_gin_error

    parse_recipe(None, (), config_text=config_text)
    built = {}
    for key, binding in names.items():
        try:
            value = gin.query_parameter(binding)
        except ValueError:
            raise UserError(f"the run's config has no binding {binding}", "the checkpoint's config",
                            "sample from a run folder written by `realuid run`") from None
        if hasattr(value, "scoped_configurable_fn"):
            try:
                value = value.scoped_configurable_fn()
            except (ValueError, TypeError) as err:
                raise translate_gin_error(err, "the checkpoint's config") from None
        built[key] = value
    return built


def load_trained(source: str | Path, device="cpu", where: str = "SOURCE argument") -> TrainedModel:
    """A teacher (EMA field) or student (EMA generator) from a run folder, checkpoint, registry name or export folder.

    The architecture comes from the checkpoint's own copy of the run's
    config.gin (or the run folder's), the weights from its EMA, loaded with
    ``weights_only=True``. Parses gin: use it from a command, not inside a run.
    An export folder (:func:`realuid.models.export.is_export_folder`) is read
    from its config.json and model.safetensors instead, without gin.
    """
    from realuid.fields import NetworkField
    from realuid.models.export import is_export_folder, load_export

    if is_export_folder(source):
        return load_export(source, device, where)

    resolved = resolve_source(source, where)
    state = load_checkpoint(resolved.checkpoint, map_location="cpu")
    meta = state.get("meta") or {}
    config = meta.get("config")
    if config is None and resolved.run_dir is not None and (resolved.run_dir / "config.gin").is_file():
        config = (resolved.run_dir / "config.gin").read_text()
    if config is None:
        raise UserError(f"the checkpoint {resolved.checkpoint} carries no config and has no run folder", where,
                        "give the run folder the checkpoint was written in")
    kind = meta.get("kind") or ("teacher" if "network" in state else "student")
    if kind == "teacher":
        built = _build_from_config(config, {"network": "MatchingTrainer.network", "path": "MatchingTrainer.path"})
        network = built["network"]
        network.load_state_dict(ema_weights(state))
        module = NetworkField(network, built["path"], meta.get("parameterization") or "velocity")
    else:
        built = _build_from_config(config, {"generator": "DistillationTrainer.generator",
                                            "path": "DistillationTrainer.path"})
        context = RunContext(built["path"], meta.get("parameterization") or "velocity", owner="DistillationTrainer")
        module = built["generator"].attach(context)
        module.load_state_dict(ema_weights(state))
    module = module.to(device).eval().requires_grad_(False)
    shape = tuple(meta.get("shape") or ())
    if not shape:
        raise UserError(f"the checkpoint {resolved.checkpoint} does not record its data shape", where,
                        "use a checkpoint written by this version of realuid")
    return TrainedModel(kind=kind, module=module, path=built["path"],
                        parameterization=meta.get("parameterization") or "velocity", shape=shape,
                        num_classes=int(meta.get("num_classes") or 0), checkpoint=resolved.checkpoint,
                        step=int(state.get("step", 0)), source=str(source))
