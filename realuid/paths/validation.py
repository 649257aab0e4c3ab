"""Checks of an affine path's coefficients, run when a path is built: errors name the component and the fix.

An affine path ``x_t = a_t x0 + b_t x1 + g_t z`` converts between
parameterisations through x0 (:mod:`realuid.paths.base`); those conversions
divide by ``sigma_t`` (epsilon, score, velocity from x0), by ``a_t`` (x0 from
epsilon or score) and by ``k_t = a'_t - a_t sigma'_t / sigma_t`` (x0 from
velocity). :func:`validate_coefficients` checks, on a grid of ``[t_min, t_max]``:

1. every coefficient and derivative is finite;
2. the derivatives agree with central finite differences of the coefficients
   (a hand-written coefficient function with a wrong derivative is the commonest slip);
3. ``sigma_t > 0``, ``a_t > 0`` and ``k_t != 0`` inside ``(t_min, t_max)``
   wherever a supported parameterisation divides by them (a zero exactly at an
   end of the interval is allowed: the uniform time law never draws it);
4. the signal-to-noise ratio ``a_t / sigma_t`` decreases: time runs from data
   (``t_min``) to noise (``t_max``), as every sampler of the package assumes.

:func:`x0_slope` gives the scalar ``k_P(t)`` with ``pred_P = k_P x0 + (terms in
x_t, x1)``, used to state a loss weight in one parameterisation and convert it
to another: an x0-space weight ``lambda`` is ``lambda / k_P^2`` in space P.
"""

from __future__ import annotations

import torch

from realuid.errors import UserError


def x0_slope(path, t: torch.Tensor, parameterization: str) -> torch.Tensor:
    """k_P(t) = d pred_P / d x0 at fixed (x_t, x1): every conversion of an affine path is affine in x0."""
    t = torch.as_tensor(t)
    zero = torch.zeros(t.shape[0], 1, dtype=t.dtype, device=t.device)
    one = torch.ones_like(zero)
    at_one = path.from_x0(one, parameterization, zero, t, zero)
    at_zero = path.from_x0(zero, parameterization, zero, t, zero)
    return (at_one - at_zero)[:, 0]


def _as_tensor(value, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype).expand_as(like).clone()


def validate_coefficients(path, grid: torch.Tensor | None = None, points: int = 201) -> None:
    """Raise :class:`UserError` if ``path``'s coefficients breaks a rule above; ``grid`` defaults to a linspace."""
    name = type(path).__name__
    where = f"{name} (its coefficients on [t_min, t_max] = [{path.t_min:g}, {path.t_max:g}])"
    if grid is None:
        grid = torch.linspace(path.t_min, path.t_max, points, dtype=torch.float64)
    t = grid.to(torch.float64)
    s = path.coefficients(t)
    coef = {k: _as_tensor(getattr(s, k), t) for k in ("a", "da", "b", "db", "g", "dg")}

    for key, value in coef.items():
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            raise UserError(f"{name}'s coefficients gives a non-finite {key} at t = {float(t[bad][0]):g}", where,
                            f"keep t_min and t_max inside the range where the schedule and its derivative are "
                            f"finite (e.g. bind {name}.t_min / t_max away from the ends where a square root "
                            "vanishes), or fix the coefficients")

    # derivatives against central finite differences (relative step, float64)
    h = 1e-6 * max(path.t_max - path.t_min, 1e-12)
    inner = t[(t - h > path.t_min) & (t + h < path.t_max)]
    if inner.numel():
        hi, lo = path.coefficients(inner + h), path.coefficients(inner - h)
        for key, dkey in (("a", "da"), ("b", "db"), ("g", "dg")):
            fd = (_as_tensor(getattr(hi, key), inner) - _as_tensor(getattr(lo, key), inner)) / (2 * h)
            exact = _as_tensor(getattr(path.coefficients(inner), dkey), inner)
            err = (fd - exact).abs() / (1.0 + exact.abs())
            if bool((err > 1e-4).any()):
                i = int(err.argmax())
                raise UserError(f"{name}'s coefficients gives {dkey} = {float(exact[i]):.6g} at t = {float(inner[i]):g}, "
                                f"but the finite difference of {key} there is {float(fd[i]):.6g}", where,
                                f"return the time derivative of {key} as {dkey} in {name}.coefficients")

    params = set(path.parameterizations)
    interior = (t > path.t_min) & (t < path.t_max)
    sigma, dsigma = (_as_tensor(v, t) for v in path.noise_scale(s))
    if params - {"x0"}:
        hit = interior & (sigma <= 0)
        if bool(hit.any()):
            raise UserError(f"{name}'s noise scale sigma_t is 0 at t = {float(t[hit][0]):g}, and the "
                            f"parameterisations {sorted(params - {'x0'})} divide by it", where,
                            "make the noise coefficient positive inside (t_min, t_max), or narrow t_min / t_max")
    if params & {"epsilon", "score"}:
        hit = interior & (coef["a"] <= 0)
        if bool(hit.any()):
            raise UserError(f"{name}'s data coefficient a_t is {float(coef['a'][hit][0]):g} at t = "
                            f"{float(t[hit][0]):g}, and reading epsilon or score as x0 divides by it", where,
                            "keep a_t > 0 inside (t_min, t_max): lower t_max or fix the coefficients")
    ok = sigma > 0
    snr = coef["a"][ok] / sigma[ok]
    rises = snr[1:] > snr[:-1] * (1 + 1e-9) + 1e-12
    if bool(rises.any()):
        i = int(torch.nonzero(rises)[0])
        ts = t[ok]
        raise UserError(f"{name}'s coefficients is not monotone: the signal-to-noise ratio a_t / sigma_t rises from "
                        f"{float(snr[i]):.6g} at t = {float(ts[i]):g} to {float(snr[i + 1]):.6g} at t = "
                        f"{float(ts[i + 1]):g}", where,
                        "time runs from data (t_min) to noise (t_max): a_t must fall and the noise grow with t")
    if "velocity" in params:
        ok = sigma > 0
        k = coef["da"][ok] - coef["a"][ok] * dsigma[ok] / sigma[ok]
        if k.numel() and not (bool((k < 0).all()) or bool((k > 0).all())):
            hit = t[ok][(k >= 0) if float(k[0]) < 0 else (k <= 0)]
            raise UserError(f"{name}: a'_t - a_t sigma'_t / sigma_t changes sign or vanishes near t = "
                            f"{float(hit[0]):g}, so a velocity cannot be read as x0 there", where,
                            "use a schedule whose data share a_t / sigma_t strictly decreases, or the x0 "
                            "parameterisation")
