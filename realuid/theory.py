"""Ideal optima that tests and tools compare training with: where an objective would lead, exactly.

:func:`ideal_weights` is RealUID's optimum over the generator's mixture weights
with the fake model exact (DESIGN §3), on the set-up of ``tools/real_data_study.py``:
data ``p* = sum_k w*_k N(mu_k, s_k^2 I)``, a teacher ``p^T`` with the same modes and
other weights ``w^T``, and generators ``p^w = sum_k w_k N(mu_k, s_k^2 I)`` whose weights
``w`` are free. Rectified flow ``x_t = (1 - t) x0 + t x1`` (``x1 ~ N(0, I)``), x0
parameterisation (each field is ``E[x0 | x_t]`` of its law), time weight 1,
``t ~ U[0, 1]``, ``gamma = alpha``. With the fake model at its pointwise optimum

    f = [beta p^w_t f^w + (1-beta) p*_t f^data] / [alpha p^w_t + (1-alpha) p*_t]

the objective left to the generator is

    J(w) = E_t int ||A_t(x)||^2 / C_t(x) dx        (squared l2)
    J(w) = E_t int ||A_t(x)|| dx                   (non-squared, NormalizedL2)
    A_t = beta p^w_t f^w + (1-beta) p*_t f^data - C_t f^T,   C_t = alpha p^w_t + (1-alpha) p*_t

(``f^T`` the teacher's field), and ``ideal_weights`` returns ``argmin_w J(w)``.

How: ``t`` by the midpoint rule on ``times`` points of (0, 1); the integral over ``x``
by importance sampling, ``points`` draws per time from the noised proposal
``(p* + p^T) / 2`` with common random numbers (``seed``), so that ``J`` is a smooth
function of ``w``; all densities and fields in closed form (Gaussian posteriors);
``w = softmax(logits)`` minimised by L-BFGS (strong Wolfe line search, 50
iterations). Check: ``alpha = beta`` gives ``(w^T - (1 - alpha) w*) / alpha``
whenever that is a distribution (``alpha = beta = 1``: the teacher).

Usage::

    data = GaussianMixture(means, 0.5)
    teacher = GaussianMixture(means, 0.5, weights=[2.0, 1.0, 1.0])
    ideal_weights(data, teacher, alpha=0.92, beta=0.94)     # [w_1, ..., w_K], rounded to 1e-4
"""

from __future__ import annotations

import torch


def _mixture_terms(mixture, w, x, a, sigma):
    """Density p_t(x) [T, N] and flux p_t(x) E[x0 | x_t = x] [T, N, D] of sum_k w_k N(mu_k, s_k^2 I)."""
    means = mixture.means
    var0 = mixture.covs.diagonal(dim1=-2, dim2=-1).mean(-1)  # isotropic s_k^2 (checked by the caller)
    a4 = a.reshape(-1, 1, 1, 1)
    v = a.reshape(-1, 1, 1) ** 2 * var0 + sigma.reshape(-1, 1, 1) ** 2  # [T, 1, K]
    diff = x[:, :, None, :] - a4 * means  # [T, N, K, D]
    dim = means.shape[1]
    log_n = -0.5 * (diff**2).sum(-1) / v - 0.5 * dim * torch.log(2 * torch.pi * v)
    comp = w * torch.exp(log_n)  # [T, N, K]
    post = means + (a.reshape(-1, 1, 1) * var0 / v)[..., None] * diff  # E[x0 | x_t, mode k]
    return comp.sum(-1), (comp[..., None] * post).sum(-2)


def ideal_weights(data, teacher, alpha: float, beta: float, normalized: bool = False, times: int = 32,
                  points: int = 2048, seed: int = 0) -> list[float]:
    """Mode weights w minimising the objective at its fake optimum over generators sum_k w_k N(mu_k, S_k).

    Rectified flow, x0 parameterisation, w(t) = 1, t ~ U[0, 1] (the study's set-up), gamma = alpha.
    The fake optimum gives (DESIGN §3) the value E_t int ||A_t||^2 / C_t dx (squared l2) or
    E_t int ||A_t|| dx (non-squared), with A = beta p^w f^w + (1-beta) p* f* - C f^T and
    C = alpha p^w + (1-alpha) p* (p*, f* the data's density and field, f^T the teacher's).
    Integrals by importance sampling from (p* + p^T) / 2 with common random numbers, minimised
    over the weights by L-BFGS. alpha = beta gives (p^T - (1-alpha) p*) / alpha in closed form
    whenever that is a density: a check of this computation. Only weights vary: the mode shapes
    are the data's, which the teacher shares here.
    """
    covs = data.covs
    if not torch.allclose(covs, covs.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None] * torch.eye(data.dim,
                                                                                                   dtype=covs.dtype)):
        raise ValueError("ideal_weights needs isotropic modes")
    g = torch.Generator().manual_seed(seed)
    t = (torch.arange(times, dtype=torch.float64) + 0.5) / times
    a, sigma = 1 - t, t
    wd, wt = data.weights, teacher.weights
    proposal = 0.5 * wd + 0.5 * wt
    modes = torch.multinomial(proposal, times * points, replacement=True, generator=g).reshape(times, points)
    chol = torch.linalg.cholesky(covs)
    x0 = data.means[modes] + torch.einsum("tnij,tnj->tni", chol[modes],
                                          torch.randn(times, points, data.dim, generator=g, dtype=torch.float64))
    x = a.reshape(-1, 1, 1) * x0 + sigma.reshape(-1, 1, 1) * torch.randn(times, points, data.dim, generator=g,
                                                                           dtype=torch.float64)
    q, _ = _mixture_terms(data, proposal, x, a, sigma)
    p_d, flux_d = _mixture_terms(data, wd, x, a, sigma)
    p_t, flux_t = _mixture_terms(data, wt, x, a, sigma)
    f_teacher = flux_t / p_t[..., None]
    logits = torch.zeros(len(wd), dtype=torch.float64, requires_grad=True)

    def value():
        p_g, flux_g = _mixture_terms(data, torch.softmax(logits, 0), x, a, sigma)
        c = alpha * p_g + (1 - alpha) * p_d
        big_a = beta * flux_g + (1 - beta) * flux_d - c[..., None] * f_teacher
        sq = (big_a**2).sum(-1)
        return ((sq + 1e-30).sqrt() / q).mean() if normalized else (sq / c / q).mean()

    opt = torch.optim.LBFGS([logits], max_iter=50, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = value()
        loss.backward()
        return loss

    opt.step(closure)
    return [round(float(v), 4) for v in torch.softmax(logits, 0).detach()]
