"""Wrappers of foreign backbones: a network trained elsewhere, called as ``network(x, t, cond)`` in realuid's time.

The foreign package is imported when a wrapper is built, never when realuid
loads its components, so it stays an optional dependency
(``pip install 'realuid[diffusers]'``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from realuid.components import register
from realuid.errors import UserError, warn

_FIX_INSTALL = "pip install 'realuid[diffusers]' (or pip install diffusers)"


def _import_diffusers():
    try:
        import diffusers
    except ImportError as err:
        raise UserError(f"DiffusersUNet needs the diffusers package, which cannot be imported ({err})",
                        "DiffusersUNet", _FIX_INSTALL) from None
    return diffusers


def _read_json(path: Path, where: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable JSON file ({err})", where,
                        "give a folder written by diffusers' save_pretrained") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object", where, "give a folder written by save_pretrained")
    return data


@register("network")
class DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DModel`` (local ``from_pretrained`` folder) predicting DDPM noise, read on realuid's VP path.

    ``forward(x_t, t, cond) = unet(x_t, k(t), class_labels=cond).sample``, the
    noise prediction at the (fractional) training timestep ``k(t)`` whose noise
    level is the VP path's at ``t``:

        abar_VP(t) = exp(-(beta_min t + (beta_max - beta_min) t^2 / 2))      (realuid.paths.VP, given as ``vp``)
        abar_k     = prod_{i <= k} (1 - beta_i),   k = 0 .. N - 1            (the scheduler's training table)
        k(t)       = the piecewise-linear interpolation of k against -log abar_k at -log abar_VP(t)

    so wherever ``abar_VP(t) = abar_k`` the network sees exactly the input it
    was trained on at step ``k``; read it as ``'epsilon'``
    (``NetworkTeacher.parameterization = 'epsilon'``). DDPM's linear betas
    ``1e-4 .. 0.02`` over ``N = 1000`` steps are, in the continuous limit, the
    VP path with ``beta_min = N beta_start = 0.1``, ``beta_max = N beta_end = 20``
    (Song et al. 2021), realuid's ``VP()`` defaults; their ``t = 1`` then sits at
    ``k = 995.6`` of that table.

    Supported: ``UNet2DModel`` with the positional time embedding, as many
    output as input channels, optionally a class-label embedding
    (``num_class_embeds``); the training schedule of a DDPM/DDIM scheduler
    config with ``prediction_type = "epsilon"`` and any beta table diffusers
    builds (``linear``, ``scaled_linear``, ``squaredcos_cap_v2``, ``sigmoid``,
    trained betas), as long as the VP path's noise range fits in it:
    ``abar_VP(t_max) >= abar_{N-1}`` (times below the first step's noise level
    are clamped to ``k = 0``). Refused, with the reason: ``v_prediction`` and
    ``sample`` prediction, Fourier time embeddings (score-SDE VE models, noise
    levels not timesteps), learned variances (twice the channels), other model
    classes (``UNet2DConditionModel``), non-VP or preconditioned paths.

    The schedule is read from ``scheduler`` (a folder or ``scheduler_config.json``),
    else ``<path>/scheduler/`` (a pipeline folder), else ``<path>/scheduler_config.json``;
    with none of them DDPM's defaults are assumed, with a warning.

    Usage (gin/uid_vp_diffusers.gin)::

        NetworkTeacher.network = @teacher/DiffusersUNet()
        DiffusersUNet.path = '/models/ddpm-cifar10-32'     # save_pretrained folder: unet/ + scheduler/, or the UNet's
        DiffusersUNet.vp = @VP()                             # the recipe's VP bindings
        NetworkTeacher.parameterization = 'epsilon'

    Args:
        path: the local folder (a pipeline's, with ``unet/``, or a UNet2DModel's own).
        vp: the VP path the network is read on (default ``VP()``: beta 0.1 .. 20).
        scheduler: a scheduler config folder or JSON file (default: found in ``path``).
    """

    loads_own_weights = True

    def __init__(self, path: str | None = None, vp=None, scheduler: str | None = None):
        super().__init__()
        from realuid.paths.diffusion import VP

        where = f"DiffusersUNet.path = {path!r}"
        if path is None:
            raise UserError("DiffusersUNet.path is not set", "DiffusersUNet.path",
                            "bind it to a local folder written by save_pretrained (a UNet2DModel's, or a "
                            "pipeline's with unet/ and scheduler/)")
        folder = Path(path)
        if not folder.is_dir():
            raise UserError(f"{folder} {'is a file, not a folder' if folder.exists() else 'does not exist'}", where,
                            "give the local folder a diffusers save_pretrained wrote (nothing is downloaded)")
        self.vp = VP() if vp is None else vp
        if not isinstance(self.vp, VP):
            raise UserError(f"DiffusersUNet.vp must be a VP path, got {self.vp!r}", "DiffusersUNet.vp",
                            "bind DiffusersUNet.vp = @VP() (it takes the recipe's VP bindings)")
        unet_folder = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
        if not (unet_folder / "config.json").is_file():
            raise UserError(f"{folder} is not a diffusers model folder (no config.json or unet/config.json)", where,
                            "give the folder UNet2DModel.save_pretrained (or a pipeline's save_pretrained) wrote")
        config = _read_json(unet_folder / "config.json", where)
        if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
            raise UserError(f"{unet_folder} holds a {config.get('_class_name')}, not a UNet2DModel", where,
                            "DiffusersUNet wraps unconditional / class-conditional UNet2DModel pixel models")
        self.unet = self._load(unet_folder, where)
        cfg = self.unet.config
        if cfg.time_embedding_type != "positional":
            raise UserError(f"the UNet's time embedding is {cfg.time_embedding_type!r}: it is conditioned on noise "
                            "levels (score-SDE VE), not on DDPM timesteps", where,
                            "use a DDPM-style model (time_embedding_type 'positional'), or wrap it as your own "
                            "network (docs/BRING_YOUR_OWN.md)")
        if cfg.out_channels != cfg.in_channels:
            raise UserError(f"the UNet outputs {cfg.out_channels} channels for {cfg.in_channels} input channels "
                            "(a learned variance?)", where, "use a model that predicts the noise alone")
        if cfg.class_embed_type is not None:
            raise UserError(f"the UNet's class embedding is {cfg.class_embed_type!r}", where,
                            "use a model with num_class_embeds (a label table) or none")
        self.num_classes = int(cfg.num_class_embeds or 0)
        self.img_channels = int(cfg.in_channels)
        self.img_resolution = cfg.sample_size
        levels = self._noise_levels(folder, scheduler, where)
        top = self._vp_level(torch.tensor([self.vp.t_max], dtype=torch.float64))
        if float(top) > float(levels[-1]) * (1 + 1e-6):
            raise UserError(f"the VP path's noisiest time t_max = {self.vp.t_max} has -log abar = {float(top):.4g}, "
                            f"beyond the network's noisiest training step ({float(levels[-1]):.4g})", "VP.t_max",
                            "lower VP.t_max (or VP.beta_max) so that the path stays inside the schedule the model "
                            "was trained on")
        self.register_buffer("levels", levels, persistent=False)   # -log abar_k, k = 0 .. N - 1, increasing

    @staticmethod
    def _load(folder: Path, where: str):
        diffusers = _import_diffusers()
        try:
            return diffusers.UNet2DModel.from_pretrained(str(folder), local_files_only=True, low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise UserError(f"diffusers cannot load the UNet2DModel in {folder} ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:300] if str(err) else ''})", where,
                            "give a complete folder written by UNet2DModel.save_pretrained") from None

    def _noise_levels(self, folder: Path, scheduler: str | None, where: str) -> torch.Tensor:
        """-log abar_k of the model's training schedule (diffusers' own DDPMScheduler table)."""
        diffusers = _import_diffusers()
        candidates = ([Path(scheduler)] if scheduler is not None else
                      [folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json"])
        found = None
        for candidate in candidates:
            candidate = candidate / "scheduler_config.json" if candidate.is_dir() else candidate
            if candidate.is_file():
                found = candidate
                break
        if found is None and scheduler is not None:
            raise UserError(f"no scheduler config at {scheduler}", "DiffusersUNet.scheduler",
                            "give a scheduler_config.json file or the folder that holds it")
        if found is None:
            warn(f"no scheduler config in {folder}: assuming DDPM's training schedule (linear betas 1e-4 .. 0.02, "
                 "1000 steps, epsilon prediction); bind DiffusersUNet.scheduler if the model used another")
            config = {}
        else:
            config = _read_json(found, "DiffusersUNet.scheduler")
        prediction = config.get("prediction_type", "epsilon")
        if prediction != "epsilon":
            raise UserError(f"the model predicts {prediction!r} (scheduler config {found}); DiffusersUNet reads "
                            "noise (epsilon) predictions", where, "use an epsilon-prediction model")
        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
        try:
            table = diffusers.DDPMScheduler(**{k: config[k] for k in keys if k in config}).alphas_cumprod
        except (NotImplementedError, ValueError, TypeError) as err:
            raise UserError(f"diffusers cannot build the training schedule of {found} ({err})", where,
                            "use a scheduler config with a beta_schedule diffusers' DDPMScheduler knows") from None
        return -torch.log(table.double())

    def _vp_level(self, t: torch.Tensor) -> torch.Tensor:
        """-log abar_VP(t) = beta_min t + (beta_max - beta_min) t^2 / 2."""
        vp = self.vp
        return vp.beta_min * t + 0.5 * (vp.beta_max - vp.beta_min) * t**2

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The (fractional) training timestep k(t) at realuid VP times t (class docstring)."""
        dtype = torch.float32 if t.device.type == "mps" else torch.float64
        levels = self.levels.to(t.device, dtype)
        level = self._vp_level(t.to(dtype))
        upper = torch.searchsorted(levels, level).clamp(1, len(levels) - 1)
        lo, hi = levels[upper - 1], levels[upper]
        k = (upper - 1).to(dtype) + (level - lo) / (hi - lo)
        return k.clamp(0, len(levels) - 1)

    def check_path(self, path, where: str) -> None:
        """Refuse a run path other than this network's VP (called when a NetworkTeacher attaches)."""
        from realuid.paths.diffusion import VP

        if not isinstance(path, VP) or path.precondition:
            raise UserError(f"a DDPM noise-prediction network is read on an unpreconditioned VP path, not on {path!r}",
                            where, "bind DistillationTrainer.path = @VP() with VP.precondition = False")
        if not (math.isclose(path.beta_min, self.vp.beta_min) and math.isclose(path.beta_max, self.vp.beta_max)):
            raise UserError(f"the run's path {path!r} differs from the one the network's time is mapped on "
                            f"({self.vp!r})", where, "bind DiffusersUNet.vp = @VP() so that both take the recipe's "
                            "VP bindings")

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        if self.num_classes == 0 and cond is not None:
            raise UserError("DiffusersUNet was given class labels but the model is unconditional", "DiffusersUNet",
                            "distil on unconditional data")
        if self.num_classes and cond is None:
            raise UserError("the diffusers model is class-conditional and has no null class: it needs labels",
                            "DiffusersUNet", "distil on class-conditional data (the labels reach the network)")
        labels = None if cond is None else torch.as_tensor(cond, device=x.device).long().reshape(-1)
        steps = self.timestep(t).to(torch.float32)
        return self.unet(x, steps, class_labels=labels).sample
