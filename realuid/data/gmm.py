"""Gaussian mixtures: data with a closed-form matching model for every affine path (DESIGN §6)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from realuid.data.base import ALL_ROWS, Batch, DataSource
from realuid.errors import UserError
from realuid.components import register


@register("data")
class GaussianMixture(DataSource):
    """Gaussian mixture p0 = sum_k w_k N(mu_k, S_k) in any dimension, with exact posteriors.

    For ``x_t = a x0 + n``, ``n ~ N(0, s^2 I)`` independent of ``x0`` (DESIGN §6):

        p_t = sum_k w_k N(a mu_k, C_k),      C_k = a^2 S_k + s^2 I
        r_k(x_t) = w_k N(x_t; a mu_k, C_k) / p_t(x_t)
        E[x0 | x_t] = sum_k r_k [mu_k + a S_k C_k^{-1} (x_t - a mu_k)]
        grad log p_t(x_t) = -sum_k r_k C_k^{-1} (x_t - a mu_k)

    Args:
        means: K x D mode centres.
        stds: isotropic standard deviation per mode (a scalar or K values), or
            K x D per-axis standard deviations. Give ``stds`` or ``covs``.
        covs: K x D x D covariance matrices.
        weights: K mixture weights (normalised here); uniform by default.
        labelled: whether batches carry the mode index as a class label.
    """

    def __init__(self, means: Sequence[Sequence[float]] = ((-4.0, 0.0), (4.0, 0.0), (0.0, 6.93)),
                 stds: float | Sequence | None = 0.5, covs: Sequence | None = None,
                 weights: Sequence[float] | None = None, labelled: bool = False):
        where = "GaussianMixture"
        try:
            mu = torch.as_tensor(means, dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise UserError(f"GaussianMixture.means must be a K x D list of numbers ({err})", where,
                            "bind GaussianMixture.means = [[x, y], ...]") from None
        if mu.ndim == 1:
            mu = mu[:, None]
        if mu.ndim != 2 or mu.shape[0] == 0:
            raise UserError(f"GaussianMixture.means must be K x D, got shape {tuple(mu.shape)}", where,
                            "bind GaussianMixture.means = [[x, y], ...]")
        k, d = mu.shape
        self.means = mu
        self.covs = self._covariances(stds, covs, k, d)
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (k,) or bool((w <= 0).any()) or not torch.isfinite(w).all():
            raise UserError(f"GaussianMixture.weights must be {k} positive numbers, got {weights!r}", where,
                            f"bind GaussianMixture.weights to {k} positive values (they are normalised)")
        self.weights = w / w.sum()
        self.shape = (d,)
        self.labelled = labelled
        self.num_classes = k if labelled else 0
        self._chol = torch.linalg.cholesky(self.covs)
        self._rng = torch.Generator().manual_seed(0)

    @staticmethod
    def _covariances(stds, covs, k: int, d: int) -> torch.Tensor:
        where = "GaussianMixture.stds / covs"
        if (stds is None) == (covs is None):
            if covs is not None:
                raise UserError("GaussianMixture takes stds or covs, not both", where,
                                "bind one of them to None")
            raise UserError("GaussianMixture needs stds or covs", where, "bind GaussianMixture.stds = 0.5")
        if covs is not None:
            c = torch.as_tensor(covs, dtype=torch.float64)
            if c.shape != (k, d, d):
                raise UserError(f"GaussianMixture.covs must be {k} x {d} x {d}, got {tuple(c.shape)}", where,
                                "give one D x D covariance per mode")
            if not torch.allclose(c, c.transpose(1, 2)) or bool((torch.linalg.eigvalsh(c) <= 0).any()):
                raise UserError("GaussianMixture.covs must be symmetric positive definite", where,
                                "fix the covariance matrices")
            return c
        s = torch.as_tensor(stds, dtype=torch.float64)
        if s.ndim == 0:
            s = s.expand(k)
        if s.ndim == 1 and s.shape == (k,):
            s = s[:, None].expand(k, d)
        if s.shape != (k, d) or bool((s <= 0).any()):
            raise UserError(f"GaussianMixture.stds must be a positive scalar, {k} values or {k} x {d}, "
                            f"got {stds!r}", where, "bind GaussianMixture.stds = 0.5")
        return torch.diag_embed(s**2)

    # -- DataSource -----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.shape[0]

    def seed(self, seed: int) -> None:
        self._rng.manual_seed(int(seed))

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n samples (float64) and their mode indices."""
        modes = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        x = self.means[modes] + torch.einsum("nij,nj->ni", self._chol[modes], eps)
        return x, modes

    def sample_stratified(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples with mode counts as close to n w_k as integers allow (a low-noise reference)."""
        counts = torch.floor(self.weights * n).long()
        rest = n - int(counts.sum())
        counts[torch.argsort(self.weights * n - counts, descending=True)[:rest]] += 1
        modes = torch.repeat_interleave(torch.arange(len(self.weights)), counts)
        eps = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        return self.means[modes] + torch.einsum("nij,nj->ni", self._chol[modes], eps)

    def next_batch(self, n, device="cpu", rows=ALL_ROWS):
        x, modes = self.sample(n, self._rng)
        x, modes = x[rows].to(device=device, dtype=torch.get_default_dtype()), modes[rows]
        return Batch(x, modes.to(device) if self.labelled else None)

    def state_dict(self):
        return {"rng": self._rng.get_state()}

    def load_state_dict(self, state):
        self._rng.set_state(state["rng"])

    # -- exact quantities ------------------------------------------------------------------
    def _component_terms(self, x_t: torch.Tensor, a: torch.Tensor, s2: torch.Tensor):
        """Responsibilities r [B, K] and C_k^{-1}(x_t - a mu_k) [B, K, D] in float64."""
        x = x_t.double()
        a = torch.as_tensor(a, dtype=torch.float64, device=x.device).reshape(-1, 1, 1, 1)
        s2 = torch.as_tensor(s2, dtype=torch.float64, device=x.device).reshape(-1, 1, 1, 1)
        eye = torch.eye(self.dim, dtype=torch.float64, device=x.device)
        covs = a**2 * self.covs.to(x.device) + s2 * eye  # [B, K, D, D]
        diff = x[:, None, :] - a[..., 0] * self.means.to(x.device)  # [B, K, D]
        chol = torch.linalg.cholesky(covs)
        solved = torch.cholesky_solve(diff[..., None], chol)[..., 0]  # C^{-1} diff
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        log_n = -0.5 * ((diff * solved).sum(-1) + logdet + self.dim * math.log(2 * math.pi))
        log_joint = torch.log(self.weights.to(x.device)) + log_n
        return torch.softmax(log_joint, dim=-1), solved, torch.logsumexp(log_joint, dim=-1)

    def posterior_mean(self, x_t: torch.Tensor, a: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_t] for x_t = a x0 + N(0, s2 I), a and s2 per sample [B]."""
        r, solved, _ = self._component_terms(x_t, a, s2)
        a64 = torch.as_tensor(a, dtype=torch.float64, device=x_t.device).reshape(-1, 1, 1)
        per_mode = self.means.to(x_t.device) + a64 * torch.einsum("kij,bkj->bki", self.covs.to(x_t.device), solved)
        return (r[..., None] * per_mode).sum(1).to(x_t.dtype)

    def score(self, x_t: torch.Tensor, a: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """grad log p_t(x_t) = -sum_k r_k C_k^{-1} (x_t - a mu_k)."""
        r, solved, _ = self._component_terms(x_t, a, s2)
        return -(r[..., None] * solved).sum(1).to(x_t.dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p0(x)."""
        one = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        return self._component_terms(x, one, 0 * one)[2]

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mode probabilities under p0, [B, K]."""
        one = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        return self._component_terms(x, one, 0 * one)[0]

    def mahalanobis(self, x: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of each point to each mode, [B, K]."""
        one = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        _, solved, _ = self._component_terms(x, one, 0 * one)
        diff = x.double()[:, None, :] - self.means.to(x.device)
        return (diff * solved).sum(-1).clamp_min(0).sqrt()

    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        m = self.mean()
        centred = self.means - m
        return (self.weights[:, None, None] * (self.covs + centred[:, :, None] * centred[:, None, :])).sum(0)

    def __repr__(self):
        return f"GaussianMixture(K={len(self.weights)}, D={self.dim})"
