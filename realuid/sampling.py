"""Samplers: ODE solvers for teachers (Euler, Heun, any NFE, classifier-free guidance), one step for students.

A teacher is a field ``f_t(x)`` in some parameterisation of a path. Its
probability-flow ODE is ``dx/dt = v_t(x)`` with ``v`` the field read as a
velocity (:meth:`MatchingPath.convert`): for an affine path without extra
noise, ``v_t(x) = E[dx_t/dt | x_t = x]`` transports the path's marginal
``p_t`` along t (flow matching: Lipman et al. 2023; diffusion: the
probability-flow ODE of Song et al. 2021 / Karras et al. 2022). Sampling
integrates it from the noise end ``t_max`` down to ``t_min``, starting from
``x = sigma_{t_max} z``, ``z ~ N(0, I)`` (the noise end's Gaussian part; the
data term ``a_{t_max} x0`` is dropped, exactly for flows with ``a_1 = 0``).

Time grids (``grid``): ``'uniform'`` in t, or ``'karras'`` (EDM, eq. 5 with
rho = 7: ``t_i = (t_max^(1/rho) + i/N (t_min^(1/rho) - t_max^(1/rho)))^rho``);
``'auto'`` takes ``path.sampling_times(steps)`` when the path defines it,
``'karras'`` for paths whose time is the noise level (EDM), else ``'uniform'``.

Solvers, with ``NFE`` = number of field evaluations (each costs two network
calls under guidance):

- Euler: ``N = NFE`` steps ``x <- x + (t_{i+1} - t_i) v(x, t_i)``;
- Heun (Karras et al. 2022, Alg. 1): ``N = ceil(NFE / 2)`` steps, each an
  Euler predictor ``x'`` and the trapezoidal corrector
  ``x <- x + dt (v(x, t_i) + v(x', t_{i+1})) / 2``; with an odd NFE the last
  step stays Euler, so the count is exact. Second-order: at equal NFE its
  error is far below Euler's on smooth fields (tests/test_images_smoke.py).

Classifier-free guidance (Ho & Salimans 2022) with scale ``s``:
``f = f_uncond + s (f_cond - f_uncond)``, ``f_uncond`` the field at the null
label (``cond = None``). The conversions of a path are affine in the
prediction at fixed ``(x_t, t)``, so guiding in the field's own
parameterisation equals guiding the velocity. ``s = 1`` is the plain
conditional field.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from realuid.errors import UserError, check
from realuid.paths.base import MatchingPath, expand_like

SOLVERS = ("euler", "heun")
GRIDS = ("auto", "uniform", "karras")


def guided(field: Callable, scale: float) -> Callable:
    """``(x, t, cond) -> f_uncond + scale (f_cond - f_uncond)``; the field itself when ``scale == 1`` or cond is None."""
    if scale == 1.0:
        return field

    def guided_field(x, t, cond=None):
        if cond is None:
            return field(x, t, None)
        conditional = field(x, t, cond)
        unconditional = field(x, t, None)
        return unconditional + scale * (conditional - unconditional)

    return guided_field


def time_grid(path: MatchingPath, steps: int, grid: str = "auto", device="cpu", dtype=torch.float32,
              rho: float = 7.0) -> torch.Tensor:
    """``steps + 1`` decreasing times from ``path.t_max`` to ``path.t_min``."""
    check(grid in GRIDS, f"unknown time grid {grid!r}", "grid", f"use one of {', '.join(GRIDS)}")
    check(isinstance(steps, int) and steps >= 1, f"the number of ODE steps must be >= 1, got {steps!r}", "--nfe",
          "give --nfe 1 or more")
    if grid == "auto" and hasattr(path, "sampling_times"):
        return torch.as_tensor(path.sampling_times(steps), device=device, dtype=dtype)
    t_max, t_min = float(path.t_max), float(path.t_min)
    if grid == "auto":
        grid = "karras" if _time_is_noise_level(path) else "uniform"
    i = torch.arange(steps + 1, device=device, dtype=torch.float64) / steps
    if grid == "karras":
        check(t_min > 0, "the 'karras' grid needs t_min > 0", "grid", "use grid 'uniform'")
        times = (t_max ** (1 / rho) + i * (t_min ** (1 / rho) - t_max ** (1 / rho))) ** rho
    else:
        times = t_max + i * (t_min - t_max)
    return times.to(dtype)


def _time_is_noise_level(path: MatchingPath) -> bool:
    """True for paths with ``a_t = 1, b_t = t`` (EDM: the time is sigma)."""
    coefficients = getattr(path, "coefficients", None)
    if coefficients is None:
        return False
    t = torch.tensor([0.5, 2.0], dtype=torch.float64)
    s = coefficients(t)
    return bool(torch.allclose(torch.as_tensor(s.a, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
                and torch.allclose(torch.as_tensor(s.b, dtype=torch.float64), t))


def initial_noise(path: MatchingPath, z: torch.Tensor) -> torch.Tensor:
    """``x_{t_max} = sigma_{t_max} z``: the noise end's Gaussian part (``sigma^2 = b^2 + g^2``)."""
    t = torch.full((z.shape[0],), float(path.t_max), device=z.device, dtype=z.dtype)
    s = path.coefficients(t)
    sigma = torch.sqrt(torch.as_tensor(s.b) ** 2 + torch.as_tensor(s.g, dtype=z.dtype, device=z.device) ** 2)
    return expand_like(sigma, z) * z


def velocity_of(field: Callable, parameterization: str, path: MatchingPath) -> Callable:
    """``(x, t, cond) -> v_t(x)``: the field's prediction converted to a velocity, in float32/64 (not bf16)."""

    def velocity(x, t, cond):
        pred = field(x, t, cond).to(x.dtype)
        return path.convert(pred, parameterization, "velocity", x, t)

    return velocity


@torch.no_grad()
def solve_ode(velocity: Callable, x: torch.Tensor, times: torch.Tensor, cond=None, solver: str = "heun",
              nfe: int | None = None) -> torch.Tensor:
    """Integrate ``dx/dt = velocity(x, t, cond)`` over ``times`` (decreasing); Heun skips its last corrector when
    ``nfe`` is odd (``nfe = 2 (len(times) - 1) - 1``)."""
    check(solver in SOLVERS, f"unknown solver {solver!r}", "--solver", f"use one of {', '.join(SOLVERS)}")
    steps = len(times) - 1
    batch = x.shape[0]
    for i in range(steps):
        t, t_next = times[i], times[i + 1]
        dt = (t_next - t).to(x.dtype)
        tt = t.to(x.dtype).expand(batch)
        v = velocity(x, tt, cond)
        x_euler = x + dt * v
        last_is_euler = solver == "euler" or (i == steps - 1 and nfe is not None and nfe % 2 == 1)
        if last_is_euler:
            x = x_euler
            continue
        v_next = velocity(x_euler, t_next.to(x.dtype).expand(batch), cond)
        x = x + dt * 0.5 * (v + v_next)
    return x


def ode_steps(nfe: int, solver: str) -> int:
    """Steps of the time grid for an NFE budget: NFE for Euler, ceil(NFE / 2) for Heun."""
    check(isinstance(nfe, int) and nfe >= 1, f"NFE must be a positive integer, got {nfe!r}", "--nfe",
          "give --nfe 1 or more")
    check(solver in SOLVERS, f"unknown solver {solver!r}", "--solver", f"use one of {', '.join(SOLVERS)}")
    return nfe if solver == "euler" else math.ceil(nfe / 2)


@torch.no_grad()
def sample_teacher(field: Callable, parameterization: str, path: MatchingPath, z: torch.Tensor, cond=None,
                   nfe: int = 100, solver: str = "heun", cfg: float = 1.0, grid: str = "auto",
                   autocast=None) -> torch.Tensor:
    """Samples ``x_{t_min}`` of a teacher's probability-flow ODE started at ``sigma_{t_max} z``.

    Args:
        field: ``(x_t, t, cond) -> prediction`` in ``parameterization`` (e.g. a NetworkField).
        path: the path the teacher was trained on.
        z: standard Gaussian noise [B, ...] (its dtype is the integration dtype).
        cond: class labels [B] or None.
        nfe: field evaluations; solver: "euler" or "heun"; cfg: guidance scale.
        grid: "auto", "uniform" or "karras" (module docstring).
        autocast: a context-manager factory wrapped around each field call (bf16 sampling), or None.
    """
    if path.x1_is_condition or path.needs_extra_noise:
        raise UserError(f"{type(path).__name__} has no deterministic probability-flow ODE from noise in this "
                        "sampler", "sampling", "sample teachers of flow-matching or diffusion paths")
    net = guided(field, cfg)
    if autocast is not None:
        plain = net

        def net(x, t, c=None):
            with autocast():
                return plain(x, t, c)

    times = time_grid(path, ode_steps(nfe, solver), grid, device=z.device, dtype=z.dtype)
    x = initial_noise(path, z)
    return solve_ode(velocity_of(net, parameterization, path), x, times, cond, solver, nfe)


@torch.no_grad()
def sample_student(generator: Callable, z: torch.Tensor, cond=None, autocast=None) -> torch.Tensor:
    """One step: ``x0 = G(z, cond)``."""
    if autocast is None:
        return generator(z, cond)
    with autocast():
        return generator(z, cond).to(z.dtype)


def class_labels(start: int, n: int, num_classes: int, device) -> torch.Tensor | None:
    """Labels ``start .. start + n - 1`` modulo ``num_classes`` (balanced classes), or None when unconditional."""
    if not num_classes:
        return None
    return torch.arange(start, start + n, device=device) % num_classes


def generate(model: "TrainedModel", num: int, nfe: int | None = None, solver: str = "heun", cfg: float = 1.0,
             batch_size: int = 500, seed: int = 0, device="cpu", precision: str = "fp32", progress=None):
    """``num`` samples (float in the data's range) and their labels (or None) from a trained model.

    A teacher integrates its ODE with ``nfe`` evaluations; a student takes one step.
    Class labels cycle 0..C-1. ``progress(done)`` is called after each batch.
    """
    import torch

    from realuid.devices import autocast

    device = torch.device(device)
    context = (lambda: autocast(device, precision)) if precision == "bf16" else None
    rng = torch.Generator(device).manual_seed(seed)
    images, labels = [], []
    for start in range(0, num, batch_size):
        m = min(batch_size, num - start)
        z = torch.randn(m, *model.shape, generator=rng, device=device)
        cond = class_labels(start, m, model.num_classes, device)
        if model.kind == "teacher":
            x = sample_teacher(model.module, model.parameterization, model.path, z, cond, nfe, solver, cfg,
                               autocast=context)
        else:
            x = sample_student(model.module, z, cond, autocast=context)
        images.append(x.float().cpu())
        if cond is not None:
            labels.append(cond.cpu())
        if progress is not None:
            progress(start + m)
    return torch.cat(images), (torch.cat(labels) if labels else None)
