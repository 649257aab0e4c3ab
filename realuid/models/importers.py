"""Foreign checkpoints in: torchcfm U-Nets as realuid run folders, and plain weights files for any network.

:func:`read_weights_file` and :func:`select_state_dict` read a ``.pt`` /
``.safetensors`` file safely and find the state dict in it (also for
:class:`~realuid.teachers.network.NetworkTeacher`);
:func:`check_fits` names the first tensor that does not fit a network.

``realuid import torchcfm CKPT --out DIR`` turns a checkpoint of torchcfm's
``UNetModel`` / ``UNetModelWrapper`` (Tong et al. 2024; the network of the
RealUID reference code and of torchcfm's CIFAR-10 example) into a run folder
(``config.gin``, ``run.json``, ``checkpoints/step_XXXXXXXX.pt`` + ``.sha256``)
that ``CheckpointTeacher.source``, ``realuid sample`` / ``eval``,
``DistillationTrainer.generator_checkpoint`` and ``load_trained`` accept:

============================ ================================================ ================ =========
layout                       top-level keys                                   default ``--key`` role
============================ ================================================ ================ =========
RealUID reference teacher    ``ema_models: {"0.999": sd, ...}``, net_model    ema_models/0.999 teacher
RealUID reference generator  ``ema_gens: {"0.999": sd, ...}``, gen, u         ema_gens/0.999   generator
torchcfm CIFAR-10 example    ``net_model``, ``ema_model``                     ema_model        teacher
bare state dict              parameter names -> tensors                       (none)           teacher
============================ ================================================ ================ =========

(0.999 is the EMA the reference code distils from and fine-tunes from by
default; with a single EMA that one is taken.) Files load with
``torch.load(weights_only=True)`` (or as ``.safetensors``): a pickle that asks
to run code is refused, naming what it asked for.

**The mapping.** torchcfm's U-Net is realuid's :class:`~realuid.networks.unet.UNet`
block for block (additive or scale-shift time embedding, 32-group norms, legacy
attention head order), so the weights are renamed, not wrapped. The
architecture (channels, multipliers, residual blocks, attention levels,
scale-shift, classes) is read from the tensors' shapes; what shapes cannot say
(image resolution, attention heads, dropout) comes from the recipe and
``--bind``. Exact rewrites make the network speak realuid's convention
(t = 0 data, t = 1 noise) instead of torchcfm's (t = 0 noise, t = 1 data),
``v_realuid(x, t) = -v_torchcfm(x, 1 - t)``, and realuid's layer layout:

- the time features ``phi(s) = [cos(s f), sin(s f)]`` satisfy ``phi(1 - t) = R phi(t)``
  with ``R = [[diag cos f, diag sin f], [diag sin f, -diag cos f]]``, so the first
  time-MLP weight becomes ``W R``; torchcfm feeds t unscaled, so ``UNet.time_scale = 1``
  (written into the folder's config; a distillation recipe that reads the folder
  needs the same binding: a U-Net without it loads the weights and computes
  another function);
- the output convolution is negated (``v -> -v``);
- attention ``qkv`` rows go from torchcfm's per-head ``[q_h, k_h, v_h]`` order to
  realuid's ``[q, k, v]`` (heads inside), 1x1 ``Conv1d`` kernels become ``Linear`` weights;
- a class-conditional model's label table gains realuid's null-class row, set to
  zero (torchcfm has no unconditional branch: the null label adds nothing to the
  time embedding, a field torchcfm never trained; guidance needs a teacher trained
  with label dropout).

A reference generator ``G(z) = z + g(0, z)`` becomes a ``OneStepGenerator``
reading the same network as a velocity at t = 1: ``G(z) = z - v_realuid(z, 1)``.

Not supported (refused with the reason): ``resblock_updown=True`` (residual
up/down-sampling blocks), ``learn_sigma=True`` (6 output channels), a first channel
multiplier other than 1; attention heads and ``use_new_attention_order`` are not
visible in the weights: give the recipe's heads (``UNet.head_channels`` /
``UNet.num_heads``) and ``--new-attention-order`` when the model was built so.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from realuid.errors import UserError

ROLES = ("teacher", "generator")
FORMATS = ("torchcfm",)
GIN_FOLDER = Path(__file__).resolve().parents[2] / "gin"
_REFUSED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
#: keys of the RealUID reference code's unused GAN discriminator head (``UNetModelWrapperWithHead.cls_pred_branch``)
_GAN_HEAD = "cls_pred_branch."


# -- reading files ---------------------------------------------------------------------------------------------------
def read_weights_file(path: Path | str, where: str) -> object:
    """The contents of a ``.pt``/``.pth``/``.ckpt`` (``torch.load(weights_only=True)``) or ``.safetensors`` file.

    A UserError names the file when it is missing, not a PyTorch/safetensors
    file, or a pickle that asks to run code (refused, naming the global it asked for).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} {'is a folder, not a file' if path.is_dir() else 'does not exist'}", where,
                        "give the path of a checkpoint file (.pt, .pth, .ckpt or .safetensors)")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UserError(f"{path} is a .safetensors file but the safetensors package is not installed", where,
                            "pip install safetensors") from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises SafetensorError (or OSError) for a bad header
            raise UserError(f"{path} is not a valid .safetensors file ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:200] if str(err) else ''})", where,
                            "give a file written by safetensors.torch.save_file") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError (refused or bad pickle), RuntimeError/EOFError/KeyError (not torch)
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
        refused = _REFUSED.search(text)
        if refused:
            raise UserError(f"{path} is a pickle that asks to run {refused.group(1)}, which weights_only=True "
                            "refuses (loading it could execute arbitrary code)", where,
                            "in an environment you trust, load it and save the weights alone, e.g. "
                            "torch.save(model.state_dict(), 'weights.pt') (or a dict of state dicts); "
                            "never load a checkpoint from an untrusted source") from None
        raise UserError(f"{path} is not a PyTorch checkpoint ({type(err).__name__}: "
                        f"{(text.strip().splitlines() or [''])[0][:200]})", where,
                        "give a file written by torch.save (a state dict or a dict of them) or a .safetensors "
                        "file") from None


def is_state_dict(obj) -> bool:
    """A non-empty mapping of parameter names to tensors."""
    return (isinstance(obj, dict) and bool(obj)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def state_dict_keys(obj, prefix: str = "", depth: int = 3) -> list[str]:
    """The ``a/b`` key paths under which ``obj`` holds state dicts ('' for a bare one)."""
    if is_state_dict(obj):
        return [prefix]
    if not isinstance(obj, dict) or depth == 0:
        return []
    found = []
    for k, v in obj.items():
        found += state_dict_keys(v, f"{prefix}/{k}" if prefix else str(k), depth - 1)
    return found


def strip_prefixes(sd: dict) -> dict:
    """Drop the ``module.`` (DataParallel / DDP) and ``_orig_mod.`` (torch.compile) prefixes every key carries."""
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _pick(option: str, listing: str) -> str:
    """How to choose a key: ``pass --key with one of ...`` (CLI) or ``bind NetworkTeacher.key to one of ...`` (gin)."""
    return f"pass {option} with one of {listing}" if option.startswith("--") else f"bind {option} to one of {listing}"


def select_state_dict(obj, key: str | None, where: str, option: str = "--key") -> tuple[dict, str]:
    """(state dict, its key path) inside a loaded checkpoint: ``key`` (``a/b``) or the layout's default.

    Defaults (module docstring): a bare state dict; ``ema_models/0.999``;
    ``ema_gens/0.999``; ``ema_model``; else the only state dict in the file.
    A missing or ambiguous key is a UserError listing the keys present and
    saying how to choose (``option``: ``--key`` or a gin binding).
    """
    present = state_dict_keys(obj)
    listing = ", ".join(repr(k) for k in present[:20]) or "none"
    if key is not None:
        node = obj
        for part in key.strip("/").split("/"):
            if not isinstance(node, dict) or part not in node:
                raise UserError(f"the checkpoint has no key {key!r} (state dicts found at: {listing})", where,
                                _pick(option, listing) if present else
                                "give a checkpoint that holds a state dict")
            node = node[part]
        if not is_state_dict(node):
            raise UserError(f"the checkpoint's {key!r} is a {type(node).__name__}, not a state dict (state dicts "
                            f"found at: {listing})", where, _pick(option, listing))
        return strip_prefixes(node), key.strip("/")
    if is_state_dict(obj):
        return strip_prefixes(obj), ""
    if not isinstance(obj, dict):
        raise UserError(f"the checkpoint holds a {type(obj).__name__}, not a state dict or a dict of them", where,
                        "save model.state_dict() (or a dict of state dicts, as torchcfm's examples do)")
    for group in ("ema_models", "ema_gens"):
        if isinstance(obj.get(group), dict):
            inner = [k for k in present if k.startswith(group + "/")]
            if f"{group}/0.999" in inner:
                return strip_prefixes(obj[group]["0.999"]), f"{group}/0.999"
            if len(inner) == 1:
                return select_state_dict(obj, inner[0], where, option)
            if inner:
                raise UserError(f"the checkpoint holds several EMA networks ({', '.join(inner)}) and none is "
                                f"{group}/0.999", where, _pick(option, ", ".join(inner)))
    if "ema_model" in present:
        return select_state_dict(obj, "ema_model", where, option)
    if len(present) == 1:
        return select_state_dict(obj, present[0], where, option)
    raise UserError(f"the checkpoint holds {'several state dicts' if present else 'no state dict'} "
                    f"(found at: {listing}) and no default applies", where,
                    _pick(option, listing) if present else
                    "give a checkpoint that holds a state dict (parameter names -> tensors)")


# -- torchcfm's U-Net -> realuid's UNet ------------------------------------------------------------------------------
@dataclass
class TorchCFMArchitecture:
    """What a torchcfm U-Net's weights say about it (the ``UNet`` arguments that shapes determine)."""

    img_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attn_levels: tuple[int, ...]          # levels (0 = full resolution) with attention
    scale_shift: bool
    num_classes: int

    def bindings(self, img_resolution: int) -> dict[str, object]:
        """``UNet.*`` values for a model of this architecture at ``img_resolution`` (torchcfm's t is unscaled)."""
        return {"img_channels": self.img_channels, "model_channels": self.model_channels,
                "channel_mult": tuple(self.channel_mult), "num_res_blocks": self.num_res_blocks,
                "attn_resolutions": tuple(img_resolution // 2**level for level in self.attn_levels),
                "scale_shift": self.scale_shift, "num_classes": self.num_classes, "time_scale": 1.0}


def torchcfm_architecture(sd: dict, where: str) -> TorchCFMArchitecture:
    """Read a torchcfm ``UNetModel`` state dict's architecture from its tensors' shapes."""
    fix = ("give a state dict of torchcfm's UNetModel / UNetModelWrapper (pick it inside the checkpoint with "
           "--key)")
    for name in ("time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight"):
        if name not in sd:
            first = ", ".join(list(sd)[:4])
            raise UserError(f"the state dict is not a torchcfm U-Net: it has no {name} (its first keys: {first})",
                            where, fix)
    if any(re.match(r"output_blocks\.\d+\.[12]\.in_layers\.", k) for k in sd):
        raise UserError("the U-Net up-samples with residual blocks (torchcfm resblock_updown=True), which "
                        "realuid's UNet does not have", where,
                        "import a model built with resblock_updown=False (torchcfm's default), or wrap it as your "
                        "own network (docs/BRING_YOUR_OWN.md)")
    model_channels = int(sd["time_embed.0.weight"].shape[1])
    img_channels = int(sd["input_blocks.0.0.weight"].shape[1])
    levels: list[list[int]] = [[]]
    attn_levels: set[int] = set()
    k = 1
    scale_shift = None
    while any(name.startswith(f"input_blocks.{k}.") for name in sd):
        if f"input_blocks.{k}.0.op.weight" in sd:
            levels.append([])
        elif f"input_blocks.{k}.0.in_layers.2.weight" in sd:
            out = int(sd[f"input_blocks.{k}.0.in_layers.2.weight"].shape[0])
            levels[-1].append(out)
            if scale_shift is None:
                scale_shift = int(sd[f"input_blocks.{k}.0.emb_layers.1.weight"].shape[0]) == 2 * out
            if f"input_blocks.{k}.1.qkv.weight" in sd:
                attn_levels.add(len(levels) - 1)
        else:
            raise UserError(f"input block {k} of the state dict is neither a residual block nor a down-sampling "
                            f"convolution (keys {', '.join(n for n in sd if n.startswith(f'input_blocks.{k}.'))})",
                            where, fix)
        k += 1
    counts = {len(level) for level in levels}
    if len(counts) != 1 or not levels[0]:
        raise UserError(f"the U-Net's levels hold {[len(level) for level in levels]} residual blocks: realuid's "
                        "UNet has the same number at every level", where, fix)
    mults = []
    for i, level in enumerate(levels):
        if len(set(level)) != 1 or level[0] % model_channels:
            raise UserError(f"level {i} of the U-Net has widths {level}, not one multiple of the time-embedding "
                            f"width {model_channels}", where,
                            "import a model whose channel multipliers are integers (torchcfm's CIFAR-10 U-Net: "
                            "(1, 2, 2, 2)), or wrap it as your own network (docs/BRING_YOUR_OWN.md)")
        mults.append(level[0] // model_channels)
    num_classes = int(sd["label_emb.weight"].shape[0]) if "label_emb.weight" in sd else 0
    return TorchCFMArchitecture(img_channels, model_channels, tuple(mults), len(levels[0]), tuple(sorted(attn_levels)),
                                bool(scale_shift), num_classes)


_RESBLOCK = {"in_layers.0": "norm_in", "in_layers.2": "conv_in", "emb_layers.1": "emb_proj",
             "out_layers.0": "norm_out", "out_layers.3": "conv_out", "skip_connection": "skip"}
_OTHER = {"norm": "norm", "qkv": "qkv", "proj_out": "proj", "op": "conv", "conv": "conv"}


def realuid_name(name: str) -> str | None:
    """realuid ``UNet`` parameter name of a torchcfm ``UNetModel`` one (None when it has no counterpart)."""
    fixed = {"time_embed.0.": "time_embedding.1.", "time_embed.2.": "time_embedding.3.",
             "label_emb.": "label_embedding.embedding.", "input_blocks.0.0.": "stem.", "out.0.": "head.0.",
             "out.2.": "head.2."}
    for old, new in fixed.items():
        if name.startswith(old):
            return new + name[len(old):]
    m = re.match(r"(input_blocks|middle_block|output_blocks)\.(?:(\d+)\.)?(\d+)\.(.+)\.(weight|bias)$", name)
    if m is None:
        return None
    group, block, layer, inner, kind = m.groups()
    if group == "middle_block":
        if block is not None:   # middle_block.<layer>.<inner>: the regex put the layer in ``block``
            inner, layer = f"{layer}.{inner}", block
        prefix = f"middle.{layer}"
    elif block is None:
        return None
    else:
        index = int(block) - 1 if group == "input_blocks" else int(block)
        prefix = f"{'encoder' if group == 'input_blocks' else 'decoder'}.{index}.{layer}"
    mapped = _RESBLOCK.get(inner) or _OTHER.get(inner)
    return None if mapped is None else f"{prefix}.{mapped}.{kind}"


def _time_flip(weight: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``W R`` with ``phi(1 - t) = R phi(t)`` for ``phi(s) = [cos(s f), sin(s f)]`` (module docstring)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half) / half).double()   # realuid's and torchcfm's f_k
    c, s = torch.diag(torch.cos(freqs)), torch.diag(torch.sin(freqs))
    rotation = torch.cat([torch.cat([c, s], 1), torch.cat([s, -c], 1)], 0)
    return (weight.double() @ rotation).to(weight.dtype)


def torchcfm_to_unet(sd: dict, network: nn.Module, new_attention_order: bool = False) -> tuple[dict, list[str]]:
    """(realuid ``UNet`` state dict, dropped keys) of a torchcfm state dict, for ``network``'s attention heads.

    Raises a UserError naming a key with no realuid counterpart. The result is
    not yet checked against ``network`` (:func:`check_fits` does that).
    """
    from realuid.networks.unet import SelfAttention

    heads = {name: module.num_heads for name, module in network.named_modules() if isinstance(module, SelfAttention)}
    out, dropped = {}, []
    for name, tensor in sd.items():
        if name.startswith(_GAN_HEAD):
            dropped.append(name)
            continue
        new = realuid_name(name)
        if new is None:
            raise UserError(f"the state dict's {name} has no counterpart in realuid's UNet: it is not a torchcfm "
                            "UNetModel (or one with options realuid does not hold)", "the checkpoint",
                            "import a torchcfm UNetModel / UNetModelWrapper state dict (--key picks one inside "
                            "the checkpoint), or wrap your network as your own (docs/BRING_YOUR_OWN.md)")
        value = tensor.detach().clone()
        module = new.rsplit(".", 2)[0]
        if new.endswith((".qkv.weight", ".qkv.bias", ".proj.weight")) and value.ndim >= 1:
            if value.ndim == 3 and value.shape[-1] == 1:
                value = value[..., 0]                      # Conv1d(k=1) kernel -> Linear weight
            if ".qkv." in new and not new_attention_order and module in heads:
                h = heads[module]
                rest = value.shape[1:]
                value = value.reshape(h, 3, -1, *rest).transpose(0, 1).reshape(-1, *rest)
        elif new == "time_embedding.1.weight":
            value = _time_flip(value, value.shape[1])
        elif new in ("head.2.weight", "head.2.bias"):
            value = -value
        elif new == "label_embedding.embedding.weight":
            value = torch.cat([value, torch.zeros_like(value[:1])])
        out[new] = value
    return out, dropped


def check_fits(network: nn.Module, sd: dict, where: str, fix: str, source_names: dict | None = None) -> None:
    """A UserError naming the first missing, unexpected or differently shaped tensor (with both shapes)."""
    from realuid.checkpoints import first_mismatch

    expected = network.state_dict()
    source_names = source_names or {}

    def label(name):
        return f"{name} (from {source_names[name]})" if name in source_names else name

    found = first_mismatch(expected, sd)
    if found is None:
        return
    kind, name = found
    if kind == "missing":
        raise UserError(f"the weights lack {name} {list(expected[name].shape)}, which the network has", where, fix)
    if kind == "shape":
        raise UserError(f"the first tensor that differs is {label(name)}: {list(sd[name].shape)} in the weights, "
                        f"{list(expected[name].shape)} in the network", where, fix)
    raise UserError(f"the weights hold {label(name)} {list(sd[name].shape)}, which the network does not have",
                    where, fix)


# -- the run folder --------------------------------------------------------------------------------------------------
@dataclass
class Imported:
    """What :func:`import_torchcfm` wrote."""

    out: Path
    role: str
    key: str
    checkpoint: Path
    step: int
    parameters: int
    num_classes: int = 0
    bindings: list[str] = field(default_factory=list)        # architecture bindings written to config.gin
    differs: list[str] = field(default_factory=list)         # those that differ from the recipe's own values
    dropped: list[str] = field(default_factory=list)


def _gin_value(value) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def _build(binding: str, where: str):
    """The object the parsed gin config binds to ``binding`` (e.g. ``MatchingTrainer.network``), built."""
    import gin

    from realuid.config import translate_gin_error

    try:
        value = gin.query_parameter(binding)
    except ValueError:
        raise UserError(f"the recipe has no binding {binding}", where,
                        "give a recipe of the role's trainer: a MatchingTrainer recipe for --role teacher "
                        "(gin/fm_cifar_teacher.gin), a DistillationTrainer one for --role generator "
                        "(gin/uid_fm_cifar.gin)") from None
    if hasattr(value, "scoped_configurable_fn"):
        try:
            value = value.scoped_configurable_fn()
        except (ValueError, TypeError) as err:
            raise translate_gin_error(err, where) from None
    return value


def _query(binding: str, default=None):
    import gin

    try:
        return gin.query_parameter(binding)
    except ValueError:
        return default


def default_recipe(role: str, num_classes: int) -> Path:
    """The CIFAR-10 recipe of a role: the flow-matching teacher, or UID's student (``_cond`` when class-conditional)."""
    stem = "fm_cifar_teacher" if role == "teacher" else "uid_fm_cifar"
    return GIN_FOLDER / f"{stem}{'_cond' if num_classes else ''}.gin"


def _check_out(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise UserError(f"--out {out} already exists", "--out",
                        "choose a new folder for the imported run (an import never writes into an existing one)")
    probe = out.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UserError(f"cannot create {out}: {probe} is not a writable folder", "--out",
                        "choose an --out path inside a folder you can write to")


def import_torchcfm(checkpoint: Path | str, out: Path | str, recipe: Path | str | None = None,
                    binds: Sequence[str] = (), key: str | None = None, role: str | None = None,
                    new_attention_order: bool = False, command: str | None = None) -> Imported:
    """Write a realuid run folder for a torchcfm U-Net checkpoint (module docstring); nothing is left on failure.

    Args:
        checkpoint: the torchcfm / RealUID reference checkpoint.
        out: the run folder to create (must not exist).
        recipe: the recipe whose config the folder records (default: the CIFAR-10 one of the role,
            ``_cond`` for a class-conditional model); architecture bindings read from the weights are added.
        binds: extra bindings, e.g. the attention heads (``UNet.head_channels = 64``).
        key: where the state dict sits (``ema_models/0.999``); default per layout.
        role: "teacher" or "generator" (default: generator for ``ema_gens``/``gen``, else teacher).
        new_attention_order: the model was built with ``use_new_attention_order=True``.
        command: the command line recorded in run.json.
    """
    import gin

    from realuid.engine.ema import EMA
    from realuid.io import sha256_file

    checkpoint, out = Path(checkpoint), Path(out)
    _check_out(out)
    if role is not None and role not in ROLES:
        raise UserError(f"unknown role {role!r}", "--role", f"use one of {', '.join(ROLES)}")
    where = f"the checkpoint {checkpoint}"
    loaded = read_weights_file(checkpoint, "CKPT argument")
    sd, key = select_state_dict(loaded, key, where)
    role = role or ("generator" if key.split("/")[0] in ("ema_gens", "gen") else "teacher")
    arch = torchcfm_architecture({k: v for k, v in sd.items() if not k.startswith(_GAN_HEAD)}, where)
    recipe = Path(recipe) if recipe is not None else default_recipe(role, arch.num_classes)
    heading = (f"# Imported by `{command or 'realuid import torchcfm'}`\n# from {checkpoint.resolve()} (key "
               f"{key or '(the whole file)'}): the recipe {recipe} with the architecture read from the weights.\n")
    try:
        config, arch_binds, differs = _config_with(arch, recipe, binds, role, heading)
        model, network, path, parameterization = _build_role(config, role)
        mapped, dropped = torchcfm_to_unet(sd, network, new_attention_order)
        check_fits(network, mapped, where,
                   "give the recipe (--recipe, --bind) the architecture the checkpoint was trained with; heads and "
                   "resolution are not visible in the weights (UNet.head_channels, UNet.num_heads, "
                   "UNet.img_resolution)", {realuid_name(k): k for k in sd if not k.startswith(_GAN_HEAD)})
        network.load_state_dict(mapped)
        from realuid.models.export import network_spec

        recorded_network = network_spec("MatchingTrainer") if role == "teacher" else None
    finally:
        gin.clear_config()

    step = loaded.get("step", 0) if isinstance(loaded, dict) else 0
    step = int(step) if isinstance(step, int) and 0 <= step <= 99_999_999 else 0
    trainer = "MatchingTrainer" if role == "teacher" else "DistillationTrainer"
    meta = {"trainer": trainer, "kind": "teacher" if role == "teacher" else "student", "config": config,
            "parameterization": parameterization, "path": type(path).__name__,
            "shape": [network.img_channels, network.img_resolution, network.img_resolution],
            "num_classes": int(network.num_classes), "world_size": 1, "network": recorded_network}
    origin = {"format": "torchcfm", "source": str(checkpoint.resolve()), "sha256": sha256_file(checkpoint),
              "key": key, "role": role, "step": step, "new_attention_order": bool(new_attention_order),
              "dropped": dropped}
    info = {"imported": origin, "recipe": str(recipe), "bindings": [*binds, *arch_binds], "argv": sys.argv,
            "command": command, "seed": 0, "imports": [], "started": _dt.datetime.now().isoformat(timespec="seconds"),
            "versions": {"realuid": __import__("realuid").__version__, "torch": torch.__version__,
                         "python": platform.python_version()}}
    state = {"step": step, "ema": EMA(model.eval()).state_dict(), "meta": meta, "imported": origin}
    write_run_folder(out, config, info, step, state)
    return Imported(out=out, role=role, key=key, checkpoint=checkpoint, step=step,
                    parameters=sum(p.numel() for p in network.parameters()), num_classes=int(network.num_classes),
                    bindings=arch_binds, differs=differs, dropped=dropped)


def _config_with(arch: TorchCFMArchitecture, recipe: Path, binds: Sequence[str], role: str,
                 heading: str) -> tuple[str, list[str], list[str]]:
    """(config.gin text, the architecture's bindings, those that differ from the recipe's): the recipe + the weights'.

    The recipe is parsed as given to learn what the weights cannot show (the
    resolution, through the network it builds), then again with the
    architecture's ``UNet.*`` bindings; the folder records all of it (gin's
    ``config_str``: the bindings that ``load_trained`` and ``CheckpointTeacher`` read).
    """
    import gin

    from realuid.config import parse_recipe
    from realuid.networks.unet import UNet

    binding = "MatchingTrainer.network" if role == "teacher" else "DistillationTrainer.generator"
    parse_recipe(recipe, binds)
    built = _build(binding, "--recipe")
    network = built if role == "teacher" else getattr(built, "network", None)
    if not isinstance(network, UNet):
        raise UserError(f"the recipe's {binding} is {type(network).__name__}, not a UNet"
                        f"{'' if role == 'teacher' else ' generator'}", "--recipe",
                        "give a CIFAR U-Net recipe of the role (gin/fm_cifar_teacher.gin or gin/uid_fm_cifar.gin)")
    values = arch.bindings(network.img_resolution)
    arch_binds = [f"UNet.{name} = {_gin_value(value)}" for name, value in values.items()]
    differs = [b for b, (name, value) in zip(arch_binds, values.items()) if _recipe_value(binding, name) != value]
    parse_recipe(recipe, [*binds, *arch_binds])
    return heading + gin.config_str(), arch_binds, differs


def _build_role(config: str, role: str):
    """(model to save, its UNet, path, parameterisation) built from ``config`` as ``load_trained`` will build them."""
    from realuid.config import parse_recipe
    from realuid.context import RunContext

    trainer = "MatchingTrainer" if role == "teacher" else "DistillationTrainer"
    parse_recipe(None, (), config_text=config)
    path = _build(f"{trainer}.path", "--recipe")
    parameterization = _query(f"{trainer}.parameterization", "velocity")
    _check_path(path, parameterization, trainer)
    if role == "teacher":
        network = _build(f"{trainer}.network", "--recipe")
        return network, network, path, parameterization
    generator = _build(f"{trainer}.generator", "--recipe")
    _check_generator(generator)
    return (generator.attach(RunContext(path, parameterization, owner=trainer)), generator.network, path,
            parameterization)


def write_run_folder(out: Path, config: str, info: dict, step: int, state: dict) -> None:
    """Write config.gin, run.json and the checkpoint into a staging folder beside ``out``, then rename it to ``out``.

    A failure (or a kill) leaves no ``out``; the staging folder is removed on
    failure (a killed import leaves a ``.<out>.import-tmp<pid>`` folder, never ``out``).
    """
    from realuid.checkpoints import save_checkpoint
    from realuid.io import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.import-tmp{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        atomic_write_text(staging / "config.gin", config)
        atomic_write_text(staging / "run.json", json.dumps(info, indent=2) + "\n")
        save_checkpoint(staging / "checkpoints", step, state)
        if out.exists():
            raise UserError(f"--out {out} appeared while the import ran", "--out", "choose a new folder")
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _recipe_value(binding: str, parameter: str):
    """The value the parsed recipe gives ``UNet.<parameter>`` of the UNet that ``binding`` builds (scope, then none)."""
    import gin

    value = gin.query_parameter(binding)
    if binding.endswith(".generator"):
        value = _query("OneStepGenerator.network", value)
    scopes = list(getattr(value, "scopes", None) or [])
    for scope in ["/".join(scopes[:i]) for i in range(len(scopes), 0, -1)]:
        found = _query(f"{scope}/UNet.{parameter}")
        if found is not None:
            return found
    return _query(f"UNet.{parameter}", _default("UNet", parameter))


def _default(component: str, parameter: str):
    import inspect

    from realuid.components import get

    return inspect.signature(get(component).cls.__init__).parameters[parameter].default


def _check_path(path, parameterization: str, trainer: str) -> None:
    from realuid.paths.flow import RectifiedFlow

    if type(path) is not RectifiedFlow or parameterization != "velocity":
        raise UserError(f"the recipe reads the network as {parameterization!r} on {type(path).__name__}; a torchcfm "
                        "U-Net is a rectified-flow velocity", f"{trainer}.path / {trainer}.parameterization",
                        f"use a rectified-flow velocity recipe ({trainer}.path = @RectifiedFlow(), "
                        f"{trainer}.parameterization = 'velocity'), e.g. gin/fm_cifar_teacher.gin")


def _check_generator(generator) -> None:
    ok = (getattr(generator, "parameterization", None) == "velocity" and getattr(generator, "time", None) in (None, 1.0)
          and getattr(generator, "noise_scale", 1.0) == 1.0)
    if not ok:
        raise UserError("the recipe's generator does not read its network as a velocity at t = 1 (the reference "
                        "generator is G(z) = z + g(0, z) = z - v(z, 1))", "OneStepGenerator",
                        "use a recipe with OneStepGenerator.parameterization = 'velocity', time = None, "
                        "noise_scale = 1 (gin/uid_fm_cifar.gin)")
