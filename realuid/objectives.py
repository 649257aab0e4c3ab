"""Objectives: the fake model's loss and the generator's loss, composed from a path and a distance.

Every objective sees the same pieces (DESIGN §2-4): the frozen teacher f*, the
fake model f, the path, a generated :class:`PathSample` (``x0 = G(z)``) and,
when it uses real data, a real one sharing the same ``x1`` and ``t``
(paper Algorithm 1). Losses are ``E_batch w(t) * per-sample value``, where
per-sample values sum over all coordinates.

One formula, one piece of code:

* the fake model of every objective here is trained by the RealUM loss
  (paper eq. 16) in the linearised form of a :class:`~realuid.distances.Distance`
  (:class:`RealUMObjective`); ``alpha = beta = 1`` is plain matching on
  generated samples (UID, SiD, FGM, DMD without real data);
* UID, RealUID, SiD and RealSiD generators are one formula, the distance's
  ``Phi`` with per-method :class:`~realuid.distances.Coefficients`
  ``(c_q, c_lin, c_t)`` (SiD(a): ``c_q = 2 a alpha``, DESIGN §4);
* DMD-KL's generator is the KL gradient ``alpha (s_fake - s*) dx_t/dtheta``
  (:class:`DMDKL`), not a ``Phi``;
* an adversarial term wraps any objective (:class:`WithGAN`).

A method is a recipe choosing among these (``gin/*.gin``), not a subclass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from realuid.distances import Coefficients, Distance, SquaredL2, inner
from realuid.errors import UserError, check_range
from realuid.fields import read_as
from realuid.paths.base import MatchingPath, PathSample
from realuid.components import register


@dataclass
class Fields:
    """What an objective evaluates: teacher f*, fake f (both read in ``parameterization``) and the path."""

    teacher: torch.nn.Module
    fake: torch.nn.Module
    path: MatchingPath
    parameterization: str

    def teacher_at(self, s: PathSample) -> torch.Tensor:
        return read_as(self.teacher, self.path, self.parameterization, s.x_t, s.t, s.cond, s.x1)

    def fake_at(self, s: PathSample) -> torch.Tensor:
        return read_as(self.fake, self.path, self.parameterization, s.x_t, s.t, s.cond, s.x1)

    def target_at(self, s: PathSample) -> torch.Tensor:
        return self.path.target(s, self.parameterization)

    def weighted_mean(self, s: PathSample, per_sample: torch.Tensor) -> torch.Tensor:
        return (self.path.weight(s.t, self.parameterization) * per_sample).mean()


class Objective(ABC):
    """Fake loss (minimised over f) and generator loss (minimised over theta, f frozen)."""

    #: whether the fake loss takes a real batch
    uses_real_data: bool = False

    def trainable_modules(self) -> list[torch.nn.Module]:
        """Extra modules trained with the fake model's optimiser (e.g. a discriminator head)."""
        return []

    @abstractmethod
    def fake_loss(self, fields: Fields, gen: PathSample, real: PathSample | None) -> tuple[torch.Tensor, dict]:
        """Scalar loss for the fake model and the numbers to log."""

    @abstractmethod
    def generator_loss(self, fields: Fields, gen: PathSample) -> tuple[torch.Tensor, dict]:
        """Scalar loss for the generator and the numbers to log (``uid_gap`` among them)."""


# -- rules shared by every objective with a real-data split -------------------------------------
def check_split(owner: str, alpha: float, beta: float) -> None:
    """The RealUM rules (DESIGN §3): alpha, beta in (0, 1], alpha = 1 only with beta = 1."""
    check_range(alpha, f"{owner}.alpha", 0.0, 1.0, low_open=True)
    check_range(beta, f"{owner}.beta", 0.0, 1.0, low_open=True)
    if alpha == 1.0 and beta != 1.0:
        raise UserError(f"{owner}.alpha = 1 requires {owner}.beta = 1 (got beta = {beta}): with no weight "
                        "on real data the real term cannot carry 1 - beta of the target", owner,
                        f"bind {owner}.alpha below 1, or {owner}.beta = 1")


def _check_parameterization(owner: str, fields: Fields, allowed: tuple[str, ...]) -> None:
    if fields.parameterization not in allowed:
        raise UserError(f"{owner} works in the {' or '.join(allowed)} parameterisation, but the trainer's is "
                        f"{fields.parameterization!r}", "DistillationTrainer.parameterization",
                        f"bind DistillationTrainer.parameterization = {allowed[0]!r}")


class RealUMObjective(Objective):
    """Shared fake side: the RealUM loss (paper eq. 16, Def. 3) in a distance's linearised form.

    The fake model minimises ``E_gen w (-Phi_gen) + E_real w (-Phi_real)`` with
    coefficients ``on_generated`` and ``on_real`` (a zero ``on_real`` means no
    real data). The generator minimises ``E_gen w Phi`` with
    ``generator_coefficients`` (by default ``on_generated``), f frozen. A
    subclass only chooses the coefficients (RealUID, SiD) or replaces the
    generator loss (DMD-KL); it is not registered itself.
    """

    name = "RealUMObjective"

    def __init__(self, on_generated: Coefficients, on_real: Coefficients, distance: Distance,
                 generator_coefficients: Coefficients | None = None):
        self.distance = distance
        self.on_generated, self.on_real = on_generated, on_real
        self.generator_coefficients = generator_coefficients or on_generated
        self.uses_real_data = not on_real.zero

    def _fake_parts(self, fields: Fields, samples: list[PathSample], coefficients: list[Coefficients]
                    ) -> list[torch.Tensor]:
        """The weighted fake loss of each sample batch with its coefficients.

        The batches go through the networks as one concatenated batch where they
        can (generated and real: one forward and backward of twice the batch
        instead of two, the same maths; the networks hold no batch statistics).
        """
        joint = samples[0] if len(samples) == 1 else PathSample.concat(*samples)
        if joint is None:  # conditions that do not stack: one call per batch
            return [self._fake_parts(fields, [s], [c])[0] for s, c in zip(samples, coefficients)]
        f = fields.fake_at(joint)
        needs_teacher = any(self.distance.needs_teacher_in_fake_step(c) for c in coefficients)
        f_star = fields.teacher_at(joint) if needs_teacher else None
        with torch.no_grad():
            f_c = fields.target_at(joint)
        sizes = [s.t.shape[0] for s in samples]

        def per_batch(x):
            return [None] * len(sizes) if x is None else x.split(sizes)

        return [fields.weighted_mean(s, self.distance.fake_loss(f_i, f_star_i, f_c_i, c))
                for s, c, f_i, f_star_i, f_c_i in zip(samples, coefficients, per_batch(f), per_batch(f_star),
                                                      per_batch(f_c))]

    def fake_loss(self, fields, gen, real):
        if not self.uses_real_data:
            loss, = self._fake_parts(fields, [gen], [self.on_generated])
            return loss, {"fake_loss_generated": loss.detach()}
        if real is None:
            raise ValueError(f"{self.name} with alpha or beta below 1 needs a real batch")
        generated, real_loss = self._fake_parts(fields, [gen, real], [self.on_generated, self.on_real])
        logs = {"fake_loss_generated": generated.detach(), "fake_loss_real": real_loss.detach()}
        return generated + real_loss, logs

    def generator_loss(self, fields, gen):
        f, f_star, f_c = fields.fake_at(gen), fields.teacher_at(gen), fields.target_at(gen)
        loss = fields.weighted_mean(gen, self.distance.generator_loss(f, f_star, f_c, self.generator_coefficients))
        gap = fields.weighted_mean(gen, self.distance.gap(f.detach(), f_star.detach()))
        return loss, {"uid_gap": gap}


@register("objective")
class RealUID(RealUMObjective):
    """RealUID (paper Thm. 2, eq. 17; general form Def. 3): UID with real data in the fake model's loss.

    Fake model (RealUM loss, eq. 16, ``gamma = alpha``):

        alpha     E_gen  w || f(x_t)  - (beta / alpha)             f_c  ||^2
      + (1-alpha) E_real w || f(x_t*) - ((1 - beta) / (1 - alpha)) f_c* ||^2

    Generator (f frozen, gradients through x0 = G(z) into x_t and f_c):

        alpha E_gen w [ ||f* - (beta/alpha) f_c||^2 - ||f - (beta/alpha) f_c||^2 ]

    ``alpha = beta = 1`` is UID (Thm. 1, eq. 13) and uses no real data; with
    ``parameterization = 'velocity'`` on a flow-matching path it is FGM
    (``gin/fgm_fm_gmm.gin``). The general form gives the quadratic term
    ``||f - f*||^2`` its own split ``gamma`` (generated) / ``1 - gamma`` (real)
    while ``alpha`` stays on the teacher term: per sample
    ``Phi = 2<f - f*, c_lin f_c - c_t f*> - c_q ||f - f*||^2`` with
    ``(c_q, c_lin, c_t) = (gamma, beta, alpha)`` on generated and
    ``(1 - gamma, 1 - beta, 1 - alpha)`` on real samples. Its fake optimum is
    ``f* + [beta p^theta f^theta + (1-beta) p* f^data - (alpha p^theta + (1-alpha) p*) f*] /
    [gamma p^theta + (1-gamma) p*]``: still f* when p^theta = p*, and RealUM's
    optimum when gamma = alpha.

    Args:
        alpha, beta: in (0, 1]; alpha = 1 only with beta = 1.
        gamma: quadratic split in (0, 1]; None means gamma = alpha; gamma = 1 only with alpha = beta = 1.
        distance: :class:`SquaredL2` (default) or :class:`NormalizedL2` (Def. 4).
    """

    name = "RealUID"

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, gamma: float | None = None,
                 distance: Distance | None = None):
        check_split("RealUID", alpha, beta)
        if gamma is not None:
            check_range(gamma, "RealUID.gamma", 0.0, 1.0, low_open=True)
            if gamma == 1.0 and (alpha, beta) != (1.0, 1.0):
                raise UserError("RealUID.gamma = 1 requires alpha = beta = 1: the real term would keep a "
                                "linear part with no quadratic part, and the fake loss is unbounded", "RealUID",
                                "bind RealUID.gamma below 1, or leave it None (gamma = alpha)")
        self.alpha, self.beta = float(alpha), float(beta)
        self.gamma = self.alpha if gamma is None else float(gamma)
        super().__init__(Coefficients(self.gamma, self.beta, self.alpha),
                         Coefficients(1 - self.gamma, 1 - self.beta, 1 - self.alpha),
                         distance if distance is not None else SquaredL2())

    def __repr__(self):
        return f"RealUID(alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, distance={self.distance!r})"


@register("objective")
class SiD(RealUMObjective):
    """SiD(a) (Zhou et al. 2024; paper eq. 33) and RealSiD (eq. 34): UID's generator with weight 2a on ||d||^2.

    With ``d = f* - f`` (f frozen) the generator minimises

        E_gen w [ -2 a alpha ||d||^2 + 2 alpha <d, f*> - 2 beta <d, f_c> ]

    which is the squared-distance ``Phi`` of :class:`SquaredL2` with
    coefficients ``(c_q, c_lin, c_t) = (2 a alpha, beta, alpha)``; the fake
    model is trained by RealUM (eq. 16) with ``(alpha, beta)``, i.e. plain
    denoising score matching on generated samples when ``alpha = beta = 1``.
    ``a = 1/2`` is UID / RealUID exactly (``gin/sid_as_uid_gmm.gin``); SiD's
    published default is ``a = 1.2``. SiD is stated for a diffusion model's
    denoiser (``x0``) or score; ``epsilon`` is accepted too (a per-time
    rescaling of the score).

    Args:
        a: weight of the Fisher-divergence term, a >= 0 (SiD's alpha; 1.2 in SiD, 0.5 = UID).
        alpha, beta: RealSiD's real-data split, as in :class:`RealUID`; 1, 1 is SiD.
    """

    name = "SiD"
    parameterizations = ("x0", "score", "epsilon")

    def __init__(self, a: float = 1.2, alpha: float = 1.0, beta: float = 1.0):
        check_range(a, "SiD.a", 0.0)
        check_split("SiD", alpha, beta)
        self.a, self.alpha, self.beta = float(a), float(alpha), float(beta)
        super().__init__(Coefficients(self.alpha, self.beta, self.alpha),
                         Coefficients(1 - self.alpha, 1 - self.beta, 1 - self.alpha), SquaredL2(),
                         generator_coefficients=Coefficients(2 * self.a * self.alpha, self.beta, self.alpha))

    def fake_loss(self, fields, gen, real):
        _check_parameterization("SiD", fields, self.parameterizations)
        return super().fake_loss(fields, gen, real)

    def generator_loss(self, fields, gen):
        _check_parameterization("SiD", fields, self.parameterizations)
        return super().generator_loss(fields, gen)

    def __repr__(self):
        return f"SiD(a={self.a}, alpha={self.alpha}, beta={self.beta})"


@register("objective")
class DMDKL(RealUMObjective):
    """DMD-style reverse KL (Yin et al. 2024; paper App. A.5): generator gradient alpha w (s_fake - s*) dx_t/dtheta.

    The fake model learns the score of the mixture ``alpha p^theta + (1-alpha) p*``
    (RealUM with ``beta = alpha``: ``KL(. || p*_t)`` is linear in its first
    argument, so the real-data split has a single weight). The generator
    minimises the surrogate

        alpha E_gen < sg(w(t) (s_fake(x_t) - s*(x_t))), x_t >

    whose gradient is ``alpha E w (s_fake - s*) dx_t/dtheta = grad_theta
    E_t w KL(alpha p^theta_t + (1-alpha) p*_t || p*_t)`` (no Jacobian of either
    network). Fields are read in the trainer's parameterisation and converted
    to ``space``: ``'score'`` is the exact KL gradient; ``'x0'`` uses
    ``x0_fake - x0*`` = ``(sigma_t^2 / a_t) (s_fake - s*)``, the KL of each time
    reweighted by ``sigma_t^2 / a_t`` (DMD's practical form without its
    per-sample normaliser), which keeps small-t terms bounded. The logged
    ``uid_gap`` is ``E w ||f - f*||^2`` in the trainer's parameterisation.

    Args:
        alpha: in (0, 1]; real data is used iff alpha < 1.
        space: 'score' (default) or 'x0'.
    """

    name = "DMDKL"
    spaces = ("score", "x0")

    def __init__(self, alpha: float = 1.0, space: str = "score"):
        check_range(alpha, "DMDKL.alpha", 0.0, 1.0, low_open=True)
        if space not in self.spaces:
            raise UserError(f"DMDKL.space = {space!r} is not one of {', '.join(self.spaces)}", "DMDKL.space",
                            "bind DMDKL.space = 'score' (exact KL gradient) or 'x0'")
        self.alpha, self.space = float(alpha), space
        a = self.alpha
        super().__init__(Coefficients(a, a, a), Coefficients(1 - a, 1 - a, 1 - a), SquaredL2())

    def _in_space(self, fields: Fields, pred: torch.Tensor, s: PathSample) -> torch.Tensor:
        return fields.path.convert(pred, fields.parameterization, self.space, s.x_t, s.t, s.x1)

    def generator_loss(self, fields, gen):
        fields.path.check_parameterization(self.space, "DMDKL.space")
        with torch.no_grad():
            detached = gen.detach()
            f, f_star = fields.fake_at(detached), fields.teacher_at(detached)
            diff = self._in_space(fields, f, detached) - self._in_space(fields, f_star, detached)
        loss = self.alpha * fields.weighted_mean(gen, inner(diff, gen.x_t))
        return loss, {"uid_gap": fields.weighted_mean(gen, self.distance.gap(f, f_star))}

    def __repr__(self):
        return f"DMDKL(alpha={self.alpha}, space={self.space!r})"


@register("objective")
class WithGAN(Objective):
    """Any objective plus an adversarial term: a discriminator head D(x_t, t) trained with the fake model.

    Discriminator (non-saturating logistic GAN on path samples, real and
    generated sharing ``x1`` and ``t``), added to the fake model's loss:

        lambda_D E [ softplus(-D(x_t*, t)) + softplus(D(sg(x_t), t)) ]

    Generator, added to the wrapped objective's generator loss:

        lambda_G E softplus(-D(x_t, t))        (gradient through x_t = path(G(z)))

    The head is returned by :meth:`trainable_modules`, so the trainer optimises
    and checkpoints it with the fake model. Two kinds of head:

    - a head that reads ``(x_t, t)`` itself (``MLPDiscriminator`` for vector
      data): ``D = head(x_t, network_time(t), cond)``, usable with any fake model;
    - a head with ``reads_fake_network = True`` (``UNetDiscriminator``, the
      paper's UID+GAN baseline, DMD2-style): ``D = head(x_t, network_time(t),
      cond, fake=F)`` with ``F`` the fake field's backbone, whose encoder
      features the head reads. The fake network's encoder is then shared by the
      matching and the adversarial losses: in the fake-model update the loss
      above trains the head *and* the fake network (matching + lambda_D
      discriminator gradients; under data parallelism it is all one forward of
      the DDP-wrapped fake side, ``FakeModelLoss``); in the generator update the
      trainer freezes the fake network and this objective freezes the head, so
      ``d/dtheta`` of the adversarial term reaches the generator only, through
      ``x_t``.

    The features read ``x_t`` at the network time without a path's input
    preconditioning (none for flow matching). It always needs real data.

    Args:
        objective: the wrapped objective (UID, RealUID, SiD, ...).
        head: discriminator network ``head(x_t, network_time(t), cond) -> [B]`` logits (with ``fake=`` when it
            reads the fake network).
        lambda_G: weight of the generator's adversarial term, >= 0 (the paper's baseline: 0.3).
        lambda_D: weight of the discriminator loss in the fake model's loss, > 0 (the paper's baseline: 1).
    """

    name = "WithGAN"
    uses_real_data = True

    def __init__(self, objective: Objective, head: torch.nn.Module, lambda_G: float = 0.01,
                 lambda_D: float = 1.0):
        if not isinstance(objective, Objective):
            raise UserError(f"WithGAN.objective must be an objective, got {type(objective).__name__}",
                            "WithGAN.objective", "bind WithGAN.objective = @RealUID() (or another objective)")
        if not isinstance(head, torch.nn.Module):
            raise UserError(f"WithGAN.head must be a network, got {type(head).__name__}", "WithGAN.head",
                            "bind WithGAN.head = @MLPDiscriminator()")
        check_range(lambda_G, "WithGAN.lambda_G", 0.0)
        check_range(lambda_D, "WithGAN.lambda_D", 0.0, low_open=True)
        self.objective, self.head = objective, head
        self.lambda_G, self.lambda_D = float(lambda_G), float(lambda_D)

    def trainable_modules(self):
        return self.objective.trainable_modules() + [self.head]

    def _logits(self, fields: Fields, s: PathSample) -> torch.Tensor:
        if getattr(self.head, "reads_fake_network", False):
            network = getattr(fields.fake, "network", fields.fake)   # the backbone of the fake NetworkField
            out = self.head(s.x_t, fields.path.network_time(s.t), s.cond, fake=network)
        else:
            out = self.head(s.x_t, fields.path.network_time(s.t), s.cond)
        return out.reshape(out.shape[0])

    def fake_loss(self, fields, gen, real):
        if real is None:
            raise ValueError("WithGAN needs a real batch")
        loss, logs = self.objective.fake_loss(fields, gen, real if self.objective.uses_real_data else None)
        d_real, d_gen = self._logits(fields, real), self._logits(fields, gen.detach())
        disc = F.softplus(-d_real).mean() + F.softplus(d_gen).mean()
        logs = {**logs, "disc_loss": disc.detach(),
                "disc_accuracy": 0.5 * ((d_real > 0).double().mean() + (d_gen < 0).double().mean()).detach()}
        return loss + self.lambda_D * disc, logs

    def generator_loss(self, fields, gen):
        loss, logs = self.objective.generator_loss(fields, gen)
        params = list(self.head.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:  # gradients reach x_t only; the head (and the fake network: the trainer) is the fake side's
            p.requires_grad_(False)
        try:
            adversarial = F.softplus(-self._logits(fields, gen)).mean()
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
        return loss + self.lambda_G * adversarial, {**logs, "gan_generator_loss": adversarial.detach()}

    def __repr__(self):
        return f"WithGAN({self.objective!r}, lambda_G={self.lambda_G}, lambda_D={self.lambda_D})"
