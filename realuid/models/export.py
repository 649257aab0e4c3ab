"""Exports: a trained generator (or teacher) as ``model.safetensors`` + ``config.json``, loaded without gin or its run.

``realuid export RUN --out DIR`` (:func:`export_run`) writes the EMA weights of
the run's newest good checkpoint and how to build the module they fit::

    DIR/model.safetensors   the weights (safetensors: named tensors, nothing to unpickle)
    DIR/config.json         plain JSON: which registered components, with which arguments

:func:`load_generator` and :func:`load_teacher` rebuild the module from
``config.json`` alone: each component by its registered name
(:func:`realuid.components.get`) with every constructor argument recorded at
export time passed explicitly, so gin is never parsed and a caller's own gin
bindings cannot change what is built. The weights are then checked tensor by
tensor (a missing, extra or wrongly shaped tensor is named) and against the
sha256 that ``config.json`` records.

``config.json``, format version 1 (``FORMAT_VERSION``):

- ``kind``: ``"student"`` (a one-step generator) or ``"teacher"`` (a field);
  ``weights``: whose state dict ``model.safetensors`` holds (``"generator"`` or ``"network"``);
- ``backbone``, ``path`` and, for students, ``generator``: ``{"name": NAME, "kwargs": {...}}``;
  an argument that is itself a component (a path's schedule) is
  ``{"component": NAME, "kwargs": {...}}``; tuples are written as lists and read back as tuples;
- ``parameterization`` (how the network's output is read), ``time`` (the time
  convention: realuid's ``t = t_min`` is the data end, ``t = t_max`` the noise
  end; flow matching ``x_t = (1 - t) x0 + t z``, the reverse of torchcfm's
  ``t``), ``shape``, ``resolution``, ``num_classes``, ``condition``
  (``"labels"``, ``"x1"`` for bridges, or null);
- ``training``: the run's recipe, bindings, seed and imports (run.json), its
  last metrics row (metrics.jsonl), step, checkpoint and the checkpoint's
  sha256, and the operative gin config (text, for the record only);
- ``weights_dtype``: the floating dtype of the stored tensors (``"float32"``, or ``"bfloat16"`` after
  ``realuid export --dtype bfloat16``, half the size: a 6.5M-parameter U-Net is 13 MB); loading casts
  them to the dtype of the module they are loaded into (a run's own dtype). Absent in older exports;
- ``weights_sha256``, ``realuid_version``, ``created``.

A component of a user's module (``realuid run --import my_module``) is found
only if that module is imported before loading (``training.imports`` names it);
loading never imports code named by a file.

Usage::

    import torch, realuid

    G = realuid.load_generator("exports/realuid_fm_cifar")   # an nn.Module, eval mode
    z = torch.randn(16, *G.shape)
    x0 = G(z)                        # [16, 3, 32, 32] in [-1, 1]; G(z, labels) when G.num_classes > 0
"""

from __future__ import annotations

import datetime as _dt
import inspect
import json
import math
import numbers
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from realuid.errors import UserError

FORMAT = "realuid-export"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
KINDS = ("student", "teacher")
#: the dtypes ``realuid export --dtype`` may store the weights in
WEIGHT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TIME_CONVENTION = ("realuid's t runs from the data end t_min (x_t = x0 for flow matching) to the noise end t_max "
                   "(x_t = z): flow matching x_t = (1 - t) x0 + t z, the reverse of torchcfm's t; for EDM t is "
                   "the noise level sigma. A generator reads the noise x_t = noise_scale * z at generator_time.")
REEXPORT = "export the run again with `realuid export RUN --out DIR --overwrite` (config.json and model.safetensors " \
           "are written together and must not be mixed)"


# -- the loaded modules ----------------------------------------------------------------------------------------------
class ExportedGenerator(nn.Module):
    """A one-step generator loaded from an export folder: ``G(z, labels=None)`` -> samples ``x0``.

    ``z`` is standard Gaussian noise of shape ``[B, *G.shape]``; ``labels`` are
    class indices ``[B]`` for a class-conditional generator (``G.num_classes > 0``),
    or a bridge's corrupted inputs ``x1`` (``G.condition == "x1"``).
    """

    def __init__(self, generator: nn.Module, path, config: dict):
        super().__init__()
        self.generator = generator
        _describe_from(self, path, config)

    def forward(self, z: torch.Tensor, labels=None) -> torch.Tensor:
        return self.generator(z, labels)


class ExportedField(nn.Module):
    """A teacher loaded from an export folder: ``f(x_t, t, labels=None)``, its prediction read as ``parameterization``.

    Sample it with :func:`realuid.sampling.sample_teacher` (``f.parameterization``, ``f.path``).
    """

    def __init__(self, field: nn.Module, path, config: dict):
        super().__init__()
        self.field = field
        _describe_from(self, path, config)

    def forward(self, x_t: torch.Tensor, t, labels=None) -> torch.Tensor:
        if not torch.is_tensor(t) or t.ndim == 0:
            t = torch.full((x_t.shape[0],), float(t), dtype=x_t.dtype, device=x_t.device)
        return self.field(x_t, t, labels)


# -- loading ---------------------------------------------------------------------------------------------------------
def _describe_from(model: nn.Module, path, config: dict) -> None:
    """What every exported model says about itself: path, config, shape, classes, condition, parameterisation."""
    model.path, model.config = path, config
    model.shape = tuple(config["shape"])
    model.num_classes = int(config.get("num_classes") or 0)
    model.condition = config.get("condition")
    model.parameterization = config["parameterization"]


def is_export_folder(path) -> bool:
    """A folder that holds config.json or model.safetensors and is not a run folder."""
    path = Path(path)
    return (path.is_dir() and ((path / CONFIG_FILE).is_file() or (path / WEIGHTS_FILE).is_file())
            and not (path / "config.gin").is_file() and not (path / "checkpoints").is_dir())


def load_generator(folder, device="cpu") -> ExportedGenerator:
    """The one-step generator of a student export folder, on ``device``, in eval mode, without gradients."""
    module, _ = _load(folder, device, "student", f"realuid.load_generator({str(folder)!r})")
    return module


def load_teacher(folder, device="cpu") -> ExportedField:
    """The field of a teacher export folder, on ``device``, in eval mode, without gradients."""
    module, _ = _load(folder, device, "teacher", f"realuid.load_teacher({str(folder)!r})")
    return module


def load_export(folder, device="cpu", where: str = "SOURCE argument"):
    """A :class:`~realuid.models.loading.TrainedModel` of an export folder (what ``realuid sample`` / ``eval`` use)."""
    from realuid.models.loading import TrainedModel

    module, config = _load(folder, device, None, where)
    inner = module.generator if config["kind"] == "student" else module.field
    return TrainedModel(kind=config["kind"], module=inner, path=module.path,
                        parameterization=config["parameterization"], shape=module.shape,
                        num_classes=module.num_classes, checkpoint=Path(folder) / WEIGHTS_FILE,
                        step=int((config.get("training") or {}).get("step") or 0), source=str(folder))


def read_config(folder, where: str) -> dict:
    """The checked config.json of an export folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"the export folder {folder} does not exist" if not folder.exists() else
                        f"{folder} is a file, not an export folder", where,
                        "give the folder `realuid export RUN --out DIR` wrote")
    file = folder / CONFIG_FILE
    if not file.is_file():
        has_weights = (folder / WEIGHTS_FILE).is_file()
        raise UserError(f"{folder} has no {CONFIG_FILE}" + (f" beside its {WEIGHTS_FILE}: the weights alone do not say "
                                                            "which network they fit" if has_weights else
                                                            ", so it is not an export folder"), where, REEXPORT)
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{file} is not valid JSON ({err})", str(file), REEXPORT) from None
    if not isinstance(config, dict):
        raise UserError(f"{file} holds a JSON {type(config).__name__}, not an object", str(file), REEXPORT)
    version = config.get("format_version")
    if config.get("format") != FORMAT or version != FORMAT_VERSION:
        import realuid

        wrote = config.get("realuid_version")
        what = (f"{file} is not a realuid export (its \"format\" is {config.get('format')!r})"
                if config.get("format") != FORMAT else
                f"{file} has format version {version!r}; realuid {realuid.__version__} reads version {FORMAT_VERSION}")
        raise UserError(what, str(file), "export the run again with this realuid (`realuid export RUN --out DIR "
                        "--overwrite`)" + (f", or load it with realuid {wrote}, which wrote it"
                                        if wrote and wrote != realuid.__version__ else ""))
    if config.get("kind") not in KINDS:
        raise UserError(f"{file} has kind {config.get('kind')!r}, not 'student' or 'teacher'", str(file), REEXPORT)
    needed = ["backbone", "path", "parameterization", "shape"] + (["generator"] if config["kind"] == "student" else [])
    missing = [key for key in needed if key not in config]
    if missing:
        raise UserError(f"{file} lacks {', '.join(repr(k) for k in missing)}", str(file), REEXPORT)
    for key in ("backbone", "path") + (("generator",) if config["kind"] == "student" else ()):
        spec = config[key]
        if not (isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("kwargs"), dict)):
            raise UserError(f"{file}: {key!r} must be {{\"name\": NAME, \"kwargs\": {{...}}}}, got {spec!r}"[:300],
                            str(file), REEXPORT)
    return config


def _load(folder, device, kind: str | None, where: str):
    """(ExportedGenerator or ExportedField, config) of an export folder; ``kind`` None accepts either."""
    from realuid.context import RunContext
    from realuid.fields import NetworkField

    folder = Path(folder)
    config = read_config(folder, where)
    file = folder / CONFIG_FILE
    if kind is not None and config["kind"] != kind:
        other = "load_teacher" if config["kind"] == "teacher" else "load_generator"
        raise UserError(f"{folder} holds a {'teacher' if config['kind'] == 'teacher' else 'one-step student'}, not a "
                        f"{'teacher' if kind == 'teacher' else 'one-step generator'}", where,
                        f"use realuid.{other}({str(folder)!r})")
    imports = (config.get("training") or {}).get("imports") or []
    path = _build(config["path"], "path", file, imports)
    backbone = _build(config["backbone"], "backbone", file, imports)
    if config["kind"] == "student":
        generator = _build(config["generator"], "generator", file, imports, network=backbone)
        context = RunContext(path, config["parameterization"], owner=f"{file} (generator)")
        inner = generator.attach(context) if hasattr(generator, "attach") else generator
        owner = "generator"
    else:
        inner = NetworkField(backbone, path, config["parameterization"])
        owner = "network"
    target = inner if config["kind"] == "student" else backbone
    load_weights(folder, target, config, owner)
    module = (ExportedGenerator if config["kind"] == "student" else ExportedField)(inner, path, config)
    return module.to(device).eval().requires_grad_(False), config


def _build(spec: dict, role: str, file: Path, imports, **extra):
    """The component ``spec`` names, built with its recorded arguments (and ``extra``), every argument explicit."""
    from realuid.components import get, suggest

    name = spec["name"]
    try:
        component = get(name)
    except UserError:
        hint = suggest(name)
        run_imports = f"; the run imported {', '.join(imports)}: import it first" if imports else ""
        raise UserError(f"{file} names the {role} {name!r}, and no registered component is called so", str(file),
                        f"{hint}{run_imports}; or {REEXPORT}") from None
    kwargs = {key: _decode(value, role, file, imports) for key, value in spec["kwargs"].items()}
    kwargs.update(extra)
    for param in _parameters(component.cls):   # unrecorded arguments (a newer realuid) get their defaults, not gin's
        if param.name not in kwargs and param.default is not param.empty:
            kwargs[param.name] = param.default
    try:
        return component.cls(**kwargs)
    except UserError as err:
        err.where = f"{file} ({role} {name})"
        raise
    except (TypeError, ValueError, RuntimeError) as err:
        raise UserError(f"the {role} {name} cannot be built from the arguments in {file} "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:200]})", str(file), REEXPORT) from None


def _decode(value, role: str, file: Path, imports):
    if isinstance(value, dict) and set(value) == {"component", "kwargs"}:
        return _build({"name": value["component"], "kwargs": value["kwargs"]}, f"{role}'s {value['component']}",
                      file, imports)
    if isinstance(value, list):
        return tuple(_decode(v, role, file, imports) for v in value)
    if isinstance(value, dict):
        return {k: _decode(v, role, file, imports) for k, v in value.items()}
    return value


def _parameters(cls) -> list[inspect.Parameter]:
    """The named constructor parameters of a component class (no self, *args, **kwargs)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def load_weights(folder: Path, module: nn.Module, config: dict, owner: str, built: str | None = None) -> None:
    """Load model.safetensors into ``module`` after checking every tensor's name, shape and dtype, then its sha256.

    ``config`` is the folder's :func:`read_config`; ``owner`` names the module in messages ("network",
    "generator"), ``built`` says where it was built (default: from config.json). The tensors are cast to
    the dtype of ``module``'s own tensors (a bfloat16 export loads into a float32 network as float32).
    """
    folder = Path(folder)
    file = folder / WEIGHTS_FILE
    if not file.is_file():
        raise UserError(f"{folder} has {CONFIG_FILE} but no {WEIGHTS_FILE}", str(folder), REEXPORT)
    tensors = _read_safetensors(file)
    expected = module.state_dict()
    built = built or f"the {owner} built from {CONFIG_FILE} ({config['backbone']['name']})"
    missing = [key for key in expected if key not in tensors]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UserError(f"{file} lacks the tensor {missing[0]!r}{more} of {built}", str(file), REEXPORT)
    extra = [key for key in tensors if key not in expected]
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise UserError(f"{file} holds the tensor {extra[0]!r}{more}, which {built} does not have", str(file),
                        REEXPORT)
    for key, value in expected.items():
        if tuple(tensors[key].shape) != tuple(value.shape):
            raise UserError(f"the tensor {key!r} in {file} has shape {tuple(tensors[key].shape)}, but {built} "
                            f"expects {tuple(value.shape)}", str(file), REEXPORT)
    recorded_dtype = config.get("weights_dtype")
    if recorded_dtype is not None:
        stored = floating_dtypes(tensors)
        if stored and stored != [recorded_dtype]:
            raise UserError(f"{file} holds {', '.join(stored)} tensors, {CONFIG_FILE} records weights_dtype "
                            f"{recorded_dtype!r}", str(file), REEXPORT)
    recorded = config.get("weights_sha256")
    if recorded:
        from realuid.io import sha256_file

        actual = sha256_file(file)
        if actual != recorded:
            raise UserError(f"{file} was changed after it was exported: its sha256 is {actual[:12]}..., "
                            f"{CONFIG_FILE} records {recorded[:12]}...", str(file),
                            f"restore the exported file, or {REEXPORT}")
    module.load_state_dict(tensors)


def floating_dtypes(tensors: dict) -> list[str]:
    """The distinct floating dtypes of a state's tensors, by name ("bfloat16", "float32"), sorted."""
    return sorted({str(v.dtype).removeprefix("torch.") for v in tensors.values() if v.is_floating_point()})


def _read_safetensors(file: Path) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise UserError("reading an export needs the safetensors package, which is not installed", str(file),
                        "pip install safetensors") from None
    try:
        return load_file(str(file))
    except Exception as err:   # SafetensorsError, OSError, ... : any unreadable file
        text = (str(err).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{file} cannot be read as a safetensors file ({type(err).__name__}: {text})", str(file),
                        REEXPORT) from None


# -- writing ---------------------------------------------------------------------------------------------------------
def export_run(source, out, overwrite: bool = False, where: str = "RUN argument", dtype: str | None = None) -> dict:
    """Write the EMA generator (student run) or EMA network (teacher run) of ``source`` to the folder ``out``.

    ``source`` is a run folder, a checkpoint file or a registry name. The
    folder is written beside ``out`` under a temporary name, checked (the
    module rebuilt from it must give the run's own outputs bit for bit; with
    ``dtype``, the outputs of the run's module with its weights rounded to
    ``dtype``), and renamed to ``out``: a failure leaves ``out`` as it was.
    ``dtype`` (a key of :data:`WEIGHT_DTYPES`, e.g. ``"bfloat16"``) stores the
    floating tensors in that dtype; None keeps the checkpoint's. Parses the run's gin
    config (clearing the current one): call it from a command. Returns config.json's content.
    """
    out = Path(out)
    if dtype is not None and dtype not in WEIGHT_DTYPES:
        raise UserError(f"--dtype {dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}", "--dtype",
                        f"give --dtype {' or '.join(WEIGHT_DTYPES)} (or leave it out to keep the checkpoint's dtype)")
    _check_out(out, overwrite)
    config, tensors = describe_run(source, where)
    if dtype is not None:
        tensors = {k: v.to(WEIGHT_DTYPES[dtype]) if v.is_floating_point() else v for k, v in tensors.items()}
    floating = floating_dtypes(tensors)
    config["weights_dtype"] = floating[0] if len(floating) == 1 else None
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the folder {parent} ({err.strerror or err})", "--out",
                        "choose an --out you can write to") from None
    tmp = parent / f".{out.name}.export-tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        _write(tmp, config, tensors)
        _check_round_trip(tmp, config, where)
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return config


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise UserError(f"--out {out} is an existing file, not a folder", "--out", "give the path of a new folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"the export folder {out} already exists and is not empty", "--out",
                            "pass --overwrite to replace it, or give another --out")
        if not (out / CONFIG_FILE).is_file() or (out / "config.gin").is_file():
            raise UserError(f"--overwrite would delete {out}, which is not a realuid export folder (it has no "
                            f"{CONFIG_FILE}" + (", and it is a run folder" if (out / "config.gin").is_file() else "")
                            + ")", "--out", "choose another --out, or empty that folder yourself")


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` to ``out``; an old export there is replaced only once the new one is whole."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.export-old{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write(folder: Path, config: dict, tensors: dict) -> None:
    from safetensors.torch import save

    from realuid.io import atomic_write_bytes, atomic_write_text, sha256_bytes

    data = save(tensors)
    config["weights_sha256"] = sha256_bytes(data)
    atomic_write_bytes(folder / WEIGHTS_FILE, data)
    atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=2, allow_nan=False) + "\n")


def _check_round_trip(folder: Path, config: dict, where: str) -> None:
    """The module rebuilt from ``folder`` must give the run's own (gin-built) module's outputs, bit for bit."""
    from realuid.models.loading import load_trained

    training = config["training"]
    reference = load_trained(training["checkpoint"], "cpu", where)
    exported, _ = _load(folder, "cpu", config["kind"], f"the export being written ({folder})")
    stored = WEIGHT_DTYPES.get(config.get("weights_dtype") or "")
    if stored is not None:   # compare with the run's module holding the weights as stored (e.g. rounded to bf16)
        with torch.no_grad():
            for tensor in reference.module.state_dict().values():   # what the export stores (shares storage)
                if tensor.is_floating_point() and tensor.dtype != stored:
                    tensor.copy_(tensor.to(stored))
    rng = torch.Generator().manual_seed(0)
    z = torch.randn(2, *config["shape"], generator=rng)
    if config["condition"] == "x1":
        cond = torch.randn(2, *config["shape"], generator=rng)
    else:
        cond = torch.arange(2) % config["num_classes"] if config["num_classes"] else None
    with torch.no_grad():
        if config["kind"] == "student":
            ours, theirs = exported(z, cond), reference.module(z, cond)
        else:
            t = torch.full((2,), 0.5 * (reference.path.t_min + reference.path.t_max))
            ours, theirs = exported(z, t, cond), reference.module(z, t, cond)
    if not torch.equal(ours, theirs):
        raise UserError(f"the module rebuilt from the export differs from the run's own (largest difference "
                        f"{(ours - theirs).abs().max().item():.3g}): some constructor argument is not recorded in "
                        f"{CONFIG_FILE}", where, "report this with the run's config.gin; load the run itself "
                        "with realuid.models.loading.load_trained meanwhile")


def describe_run(source, where: str = "RUN argument") -> tuple[dict, dict]:
    """(config.json content without ``weights_sha256``, EMA tensors) of a run's newest good checkpoint."""
    from realuid.checkpoints import load_checkpoint
    from realuid.config import import_modules, parse_recipe
    from realuid.io import sha256_file
    from realuid.models.loading import ema_weights
    from realuid.models.registry import resolve_source

    import realuid

    path = Path(str(source))
    if is_export_folder(path):
        raise UserError(f"{path} is an export folder, not a run folder", where,
                        "give the run folder it was exported from (an export can simply be copied)")
    if not path.exists() and (len(path.parts) > 1 or path.suffix == ".pt"):
        raise UserError(f"{path} does not exist", where, "give a run folder, a checkpoint file or a registry name")
    if path.is_dir() and not (path / "checkpoints").is_dir():
        raise UserError(f"{path} is not a run folder (it has no checkpoints/ folder)", where,
                        "give a folder written by `realuid run` (or `realuid import`), a checkpoint file or a "
                        "registry name")
    resolved = resolve_source(source, where)
    state = load_checkpoint(resolved.checkpoint, map_location="cpu")
    meta = state.get("meta") or {}
    run_dir = resolved.run_dir
    run_info = _read_json(run_dir / "run.json") if run_dir is not None else {}
    config_text = meta.get("config")
    if config_text is None and run_dir is not None and (run_dir / "config.gin").is_file():
        config_text = (run_dir / "config.gin").read_text()
    if config_text is None:
        raise UserError(f"the checkpoint {resolved.checkpoint} carries no config and has no run folder", where,
                        "give the run folder the checkpoint was written in")
    kind = meta.get("kind") or ("teacher" if "network" in state else "student")
    shape = [int(s) for s in meta.get("shape") or ()]
    if not shape:
        raise UserError(f"the checkpoint {resolved.checkpoint} does not record its data shape", where,
                        "use a checkpoint written by this version of realuid")
    imports = run_info.get("imports") or []
    import_modules(imports)
    parse_recipe(None, (), config_text=config_text)
    trainer = meta.get("trainer") or ("MatchingTrainer" if kind == "teacher" else "DistillationTrainer")
    if kind == "student":
        generator, scopes, bound = _describe_binding(trainer, "generator", [], skip=("network",))
        if "network" not in bound:
            raise UserError(f"the run's generator {generator['name']} has no 'network' argument, which an export "
                            "needs for its backbone", where, "export runs whose generator wraps a backbone network")
        backbone = _describe_value(bound["network"], scopes, f"{generator['name']}.network")
        backbone = {"name": backbone["component"], "kwargs": backbone["kwargs"]}
    else:
        generator = None
        backbone, _, _ = _describe_binding(trainer, "network", [])
    path_spec, _, _ = _describe_binding(trainer, "path", [])
    path_obj = _build(path_spec, "path", Path(CONFIG_FILE), imports)
    parameterization = meta.get("parameterization") or "velocity"
    num_classes = int(meta.get("num_classes") or 0)
    condition = "x1" if path_obj.x1_is_condition else ("labels" if num_classes else None)
    time = {"t_min": float(path_obj.t_min), "t_max": float(path_obj.t_max), "data_end": "t_min",
            "noise_end": "t_max", "convention": TIME_CONVENTION}
    if generator is not None:
        t_g = generator["kwargs"].get("time")
        time["generator_time"] = float(path_obj.t_max if t_g is None else t_g)
        time["noise_scale"] = float(generator["kwargs"].get("noise_scale", 1.0))
    checkpoint = resolved.checkpoint.resolve()
    sidecar = checkpoint.with_name(checkpoint.name + ".sha256")
    digest = sidecar.read_text().strip() if sidecar.is_file() else sha256_file(checkpoint)
    training = {"run": str(run_dir.resolve()) if run_dir is not None else None,
                "recipe": run_info.get("recipe") or (resolved.manifest.recipe if resolved.manifest else None),
                "bindings": run_info.get("bindings") or [], "seed": run_info.get("seed"), "imports": imports,
                "trainer": trainer, "step": int(state.get("step", 0)), "checkpoint": str(checkpoint),
                "checkpoint_sha256": digest,
                "metrics": _last_metrics(run_dir / "metrics.jsonl") if run_dir is not None else None,
                "config_gin": config_text}
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
              "weights": "generator" if kind == "student" else "network", "backbone": backbone}
    if generator is not None:
        config["generator"] = generator
    config.update({"path": path_spec, "parameterization": parameterization, "time": time, "shape": shape,
                   "resolution": (shape[-1] if shape[-1] == shape[-2] else shape[-2:]) if len(shape) == 3 else None,
                   "num_classes": num_classes, "condition": condition, "training": training,
                   "realuid_version": realuid.__version__,
                   "created": _dt.datetime.now().isoformat(timespec="seconds")})
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in ema_weights(state).items()}
    return config, tensors


def network_spec(owner: str, parameter: str = "network") -> dict | None:
    """``{"name", "kwargs"}`` of the network bound to ``owner.parameter`` in the live gin config (defaults
    filled in), or None when it cannot be written as plain data (an unregistered or unbound component)."""
    try:
        return _describe_binding(owner, parameter, [])[0]
    except (UserError, ValueError, KeyError):
        return None


def _describe_binding(owner: str, parameter: str, scopes: list[str], skip=()):
    """({"name", "kwargs"}, scopes inside it, its raw bindings) of the component bound to ``owner.parameter``."""
    import gin

    where = f"{'/'.join(scopes + [owner])}.{parameter}"
    bound = gin.get_bindings("/".join(scopes + [owner]), resolve_references=False)
    if parameter not in bound:
        raise UserError(f"the run's config has no binding {where}", "the run's config.gin",
                        "export a run folder written by `realuid run`")
    spec, inner_scopes, inner_bound = _describe_reference(bound[parameter], scopes, where, skip)
    return {"name": spec["component"], "kwargs": spec["kwargs"]}, inner_scopes, inner_bound


def _describe_reference(ref, scopes: list[str], where: str, skip=()):
    """({"component", "kwargs"}, scopes, raw bindings) of a gin reference ``@scope/Name()`` in the parsed config."""
    import gin
    from gin.config import ConfigurableReference

    from realuid.components import get

    if not isinstance(ref, ConfigurableReference) or not ref.evaluate:
        raise UserError(f"{where} is bound to {ref!r}, not to a component @Name()", where,
                        "export runs whose networks and paths are registered components")
    name = ref.configurable.name
    component = get(name)
    inner_scopes = scopes + list(ref.scopes)
    selector = "/".join(inner_scopes + [name])
    bound = gin.get_bindings(selector, resolve_references=False)
    kwargs = {}
    for param in _parameters(component.cls):
        if param.name in skip:
            continue
        label = f"{selector}.{param.name}"
        if param.name in bound:
            kwargs[param.name] = _describe_value(bound[param.name], inner_scopes, label)
        elif param.default is not param.empty:
            kwargs[param.name] = _plain(param.default, label)
        else:
            raise UserError(f"{label} is not bound in the run's config", "the run's config.gin",
                            "export a run folder written by `realuid run`")
    return {"component": name, "kwargs": kwargs}, inner_scopes, bound


def _describe_value(value, scopes: list[str], where: str):
    from gin.config import ConfigurableReference

    if isinstance(value, ConfigurableReference):
        if value.configurable.name.split(".")[-1] == "macro":
            return _describe_value(value.scoped_configurable_fn(), scopes, where)
        return _describe_reference(value, scopes, where)[0]
    if isinstance(value, (list, tuple)):
        return [_describe_value(v, scopes, f"{where}[{i}]") for i, v in enumerate(value)]
    return _plain(value, where)


def _plain(value, where: str):
    """``value`` as plain JSON data; a UserError naming the binding when it is not."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise UserError(f"{where} = {value!r} is not finite, which {CONFIG_FILE} cannot hold", where,
                            "bind a finite value")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise UserError(f"{where} is {value!r} ({type(value).__name__}), which {CONFIG_FILE} cannot hold as plain data",
                    where, "bind numbers, strings, lists or registered components; or load the run itself with "
                           "realuid.models.loading.load_trained")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err})", str(path), "restore the run's run.json") from None
    return data if isinstance(data, dict) else {}


def _last_metrics(path: Path) -> dict | None:
    """The last readable row of a metrics.jsonl, non-finite numbers written as strings ('nan', 'inf')."""
    if not path.is_file():
        return None
    for line in reversed(path.read_text().splitlines()):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
    return None
