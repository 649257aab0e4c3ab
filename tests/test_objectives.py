"""Objectives against exact answers (DESIGN §2-4), float64 throughout.

* identities on the same batch: SiD(1/2) == UID, RealSiD(1, 1) == SiD, FGM == UID on FM,
  RealUID(1, 1) == UID, each also against the paper's formula written out here;
* DMD-KL's gradient == the gradient of the (closed-form or quadrature) KL on 1-D Gaussians;
* Lemma 1: the UID generator gradient == grad E w ||f* - f^theta||^2 when f is the exact
  field of a Gaussian generator (and the non-squared analogue for the normalized distance);
* the RealUM / general-RealUID fake optimum == the pointwise formula of DESIGN §3;
* at equilibrium (generator = teacher's law, exact fake) every generator gradient is zero;
* bad parameters raise UserErrors naming the rule;
* the fake step puts generated and real samples through the networks as one batch.

Monte Carlo checks compare with ``4`` standard errors and are calibrated: a wrong
answer of the same size fails the same check.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from helpers import build_loop
from realuid.context import RunContext
from realuid.data.gmm import GaussianMixture
from realuid.distances import NormalizedL2, sq_norm
from realuid.errors import UserError
from realuid.objectives import DMDKL, Fields, RealUID, SiD, WithGAN
from realuid.paths import RectifiedFlow
from realuid.paths.base import PathSample
from realuid.teachers.analytic import AnalyticTeacher

F64 = torch.float64


# -- helpers ------------------------------------------------------------------------------------
class GaussianGenerator(nn.Module):
    """x0 = c + s z (c in R^D, s > 0): p^theta = N(c, s^2 I), whose matching field is closed form."""

    def __init__(self, c: float | list[float], s: float):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(c if isinstance(c, list) else [c], dtype=F64))
        self.s = nn.Parameter(torch.tensor(s, dtype=F64))
        self.dim = self.c.shape[0]

    def forward(self, z):
        return self.c + self.s * z

    def law(self, shift: float = 0.0) -> GaussianMixture:
        return GaussianMixture([(self.c.detach() + shift).tolist()], self.s.item())


def exact(mixture: GaussianMixture, path, parameterization: str = "x0") -> AnalyticTeacher:
    return AnalyticTeacher(mixture).attach(RunContext(path, parameterization, mixture))


def draw(path, generator, n, seed, t: float | None = None, real: GaussianMixture | None = None):
    """A generated path sample (x0 = G(z), with gradients) and optionally a real one sharing x1 and t."""
    g = torch.Generator().manual_seed(seed)
    dim = getattr(generator, "dim", 1)
    z = torch.randn(n, dim, generator=g, dtype=F64)
    x1 = torch.randn(n, dim, generator=g, dtype=F64)
    tt = path.sample_t(n, g).to(F64) if t is None else torch.full((n,), t, dtype=F64)
    gen = path.interpolate(generator(z), x1, tt)
    if real is None:
        return gen, z
    return gen, z, path.interpolate(real.sample(n, g)[0], x1, tt)


def grads(loss, params):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, retain_graph=True)])


def gaussian_kl(m1, v1, m2, v2):
    return 0.5 * (torch.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1)


def normal_pdf(x, m, v):
    v = torch.as_tensor(v, dtype=F64)
    return torch.exp(-0.5 * (x - m) ** 2 / v) / torch.sqrt(2 * math.pi * v)


def mixture_density_t(mixture: GaussianMixture, x, a, sigma):
    """p_t(x) of a 1-D mixture for x_t = a x0 + sigma n."""
    out = 0
    for w, mu, cov in zip(mixture.weights, mixture.means[:, 0], mixture.covs[:, 0, 0]):
        out = out + w * normal_pdf(x, a * mu, a**2 * cov + sigma**2)
    return out


def mean_and_se(values: list[torch.Tensor]):
    stacked = torch.stack(values)
    return stacked.mean(0), stacked.std(0) / math.sqrt(len(values))


def trainer(tmp_path, recipe, *binds):
    """The DistillationTrainer of a recipe in float64 (built, not run)."""
    return build_loop(recipe, tmp_path / recipe, "TrainingLoop.dtype = 'float64'", "TrainingLoop.steps = 3",
                      "TrainingLoop.batch_size = 128", *binds).trainer


def generator_grad(tr, objective, gen):
    params = list(tr.generator.parameters())
    loss = objective.generator_loss(tr.fields, gen)[0]
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, retain_graph=True)])


def same_training(a, b, steps=2):
    """Losses and every updated weight of two trainers agree bit for bit over ``steps`` steps."""
    for _ in range(steps):
        la, lb = a.train_step(), b.train_step()
        for key in ("fake_loss", "generator_loss"):
            if not torch.equal(la[key], lb[key]):
                return False
    return all(torch.equal(p, q) for p, q in zip(a.generator.parameters(), b.generator.parameters())) and \
        all(torch.equal(p, q) for p, q in zip(a.fake.parameters(), b.fake.parameters()))


pytestmark = pytest.mark.usefixtures("from_repository_root")   # tests/conftest.py


# -- the paper's formulas, written out independently of realuid.distances ---------------------
def sid_eq34(fields, gen, a, alpha=1.0, beta=1.0):
    """RealSiD (eq. 34; eq. 33 at alpha = beta = 1): -2 a alpha ||d||^2 + 2 alpha <d, f*> - 2 beta <d, f_c>."""
    f, fs, fc = fields.fake_at(gen), fields.teacher_at(gen), fields.target_at(gen)
    d = fs - f
    per = (-2 * a * alpha * (d**2).flatten(1).sum(-1) + 2 * alpha * (d * fs).flatten(1).sum(-1)
           - 2 * beta * (d * fc).flatten(1).sum(-1))
    return fields.weighted_mean(gen, per)


def uid_second_form(fields, gen):
    """DESIGN §2 / FGM's loss: ||f* - f||^2 + 2 <f* - f, f - f_c>."""
    f, fs, fc = fields.fake_at(gen), fields.teacher_at(gen), fields.target_at(gen)
    per = ((fs - f) ** 2).flatten(1).sum(-1) + 2 * ((fs - f) * (f - fc)).flatten(1).sum(-1)
    return fields.weighted_mean(gen, per)


def realuid_eq17(fields, gen, alpha, beta):
    """alpha [||f* - (beta/alpha) f_c||^2 - ||f - (beta/alpha) f_c||^2]."""
    f, fs, fc = fields.fake_at(gen), fields.teacher_at(gen), fields.target_at(gen)
    r = beta / alpha
    per = alpha * (((fs - r * fc) ** 2).flatten(1).sum(-1) - ((f - r * fc) ** 2).flatten(1).sum(-1))
    return fields.weighted_mean(gen, per)


# -- identities on the engine's own batches ------------------------------------------------------
def test_sid_half_is_uid_on_the_diffusion_teacher(tmp_path):
    """SiD(0.5) generator gradient == UID's, bit for bit, and both == eq. 33; SiD(1.2) == eq. 33, != UID."""
    sid = trainer(tmp_path, "sid_as_uid_gmm.gin")
    uid = trainer(tmp_path, "uid_vp_gmm.gin")
    assert same_training(sid, uid)

    gen, _ = sid.draw(with_grad=True)
    g_uid = generator_grad(sid, RealUID(), gen)
    assert torch.equal(generator_grad(sid, SiD(a=0.5), gen), g_uid)
    params = list(sid.generator.parameters())
    eq33 = lambda a: torch.cat([g.flatten() for g in torch.autograd.grad(  # noqa: E731
        sid_eq34(sid.fields, gen, a), params, retain_graph=True)])
    assert torch.allclose(eq33(0.5), g_uid, rtol=1e-9, atol=1e-12)
    g_sid = generator_grad(sid, SiD(a=1.2), gen)
    assert torch.allclose(g_sid, eq33(1.2), rtol=1e-9, atol=1e-12)
    assert not torch.allclose(g_sid, g_uid, rtol=1e-3)  # calibration: a = 1.2 is not UID


def test_realsid_with_alpha_beta_one_is_sid(tmp_path):
    real = trainer(tmp_path, "realsid_vp_gmm.gin", "SiD.alpha = 1.0", "SiD.beta = 1.0")
    sid = trainer(tmp_path, "sid_vp_gmm.gin")
    assert not real.objective.uses_real_data
    assert same_training(real, sid)

    # RealSiD proper (0.94, 0.96) is eq. 34, its fake loss is RealUID's (RealUM, eq. 16)
    gen, _ = sid.draw(with_grad=True)
    params = list(sid.generator.parameters())
    g = generator_grad(sid, SiD(1.2, 0.94, 0.96), gen)
    g34 = torch.cat([x.flatten() for x in torch.autograd.grad(sid_eq34(sid.fields, gen, 1.2, 0.94, 0.96), params,
                                                               retain_graph=True)])
    assert torch.allclose(g, g34, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(g, generator_grad(sid, SiD(1.2), gen), rtol=1e-3)  # calibration
    gen, _ = sid.draw(with_grad=False)
    real_sample = sid.path.interpolate(sid.data.sample(128)[0], gen.x1, gen.t)
    assert torch.equal(SiD(1.2, 0.94, 0.96).fake_loss(sid.fields, gen, real_sample)[0],
                       RealUID(0.94, 0.96).fake_loss(sid.fields, gen, real_sample)[0])


def test_fgm_recipe_is_uid_on_flow_matching(tmp_path):
    fgm = trainer(tmp_path, "fgm_fm_gmm.gin")
    # FGM's recipe also sets its time law and generator depth (gin/fgm_fm_gmm.gin): the same on the UID side, whose
    # recipe's student settings (gin/base/gmm_fm_student.gin) go back to the shared set-up's that FGM keeps
    uid = trainer(tmp_path, "uid_fm_gmm.gin", "DistillationTrainer.parameterization = 'velocity'",
                  "DistillationTrainer.path = @LogitNormalFlow()", "LogitNormalFlow.m = 1.5", "LogitNormalFlow.s = 1.0",
                  "generator/MLP.depth = 4", "OneStepGenerator.noise_scale = 1.0", "DistillationTrainer.fake_steps = 5",
                  "TrainingLoop.steps = 2000", "DistillationTrainer.lr_final = 0.05", "DistillationTrainer.ema_decay = 0.99")
    assert fgm.fields.parameterization == "velocity"
    assert same_training(fgm, uid)

    gen, _ = fgm.draw(with_grad=True)
    params = list(fgm.generator.parameters())
    g = generator_grad(fgm, fgm.objective, gen)
    g_fgm = torch.cat([x.flatten() for x in torch.autograd.grad(uid_second_form(fgm.fields, gen), params,
                                                                 retain_graph=True)])
    assert torch.allclose(g, g_fgm, rtol=1e-9, atol=1e-12)
    x0_uid = trainer(tmp_path, "uid_fm_gmm.gin")  # calibration: UID in x0 is another objective
    assert not same_training(trainer(tmp_path / "again", "fgm_fm_gmm.gin"), x0_uid)


def test_realuid_is_eq17_and_uid_at_alpha_beta_one(tmp_path):
    tr = trainer(tmp_path, "uid_fm_gmm.gin")
    gen, _ = tr.draw(with_grad=True)
    params = list(tr.generator.parameters())

    def formula(alpha, beta):
        return torch.cat([x.flatten() for x in torch.autograd.grad(realuid_eq17(tr.fields, gen, alpha, beta), params,
                                                                    retain_graph=True)])

    for alpha, beta in ((1.0, 1.0), (0.94, 0.96), (0.9, 0.85)):
        assert torch.allclose(generator_grad(tr, RealUID(alpha, beta), gen), formula(alpha, beta), rtol=1e-9,
                              atol=1e-12)
    assert torch.equal(generator_grad(tr, RealUID(1.0, 1.0), gen), generator_grad(tr, tr.objective, gen))
    assert torch.allclose(formula(1.0, 1.0), torch.cat([x.flatten() for x in torch.autograd.grad(
        uid_second_form(tr.fields, gen), params, retain_graph=True)]), rtol=1e-9, atol=1e-12)
    assert not torch.allclose(formula(0.94, 0.96), formula(1.0, 1.0), rtol=1e-3)  # calibration


# -- DMD-KL against the KL ---------------------------------------------------------------------------
def test_dmd_kl_gradient_is_the_closed_form_kl_gradient():
    """alpha = 1: E[(s_fake - s*) dx_t/dtheta] == grad KL(N(a c, a^2 s^2 + t^2) || N(a m, a^2 v + t^2))."""
    path, t, n = RectifiedFlow(), 0.4, 200_000
    gen_model, teacher_law = GaussianGenerator(0.3, 0.9), GaussianMixture([[-0.5]], 0.7)
    fields = Fields(exact(teacher_law, path), exact(gen_model.law(), path), path, "x0")
    gen, z = draw(path, gen_model, n, seed=1, t=t)
    params = [gen_model.c, gen_model.s]
    got = grads(DMDKL(1.0, space="score").generator_loss(fields, gen)[0], params)

    a, sig2 = 1 - t, t**2
    c, s = (p.detach().clone().requires_grad_(True) for p in params)
    want = grads(gaussian_kl(a * c, a**2 * s**2 + sig2, torch.tensor(a * -0.5, dtype=F64),
                             torch.tensor(a**2 * 0.49 + sig2, dtype=F64)), [c, s])
    # the per-sample terms the surrogate averages, for the standard error
    x = gen.x_t.detach()[:, 0]
    diff = -(x - a * 0.3) / (a**2 * 0.81 + sig2) + (x - a * -0.5) / (a**2 * 0.49 + sig2)
    per = torch.stack([a * diff, a * z[:, 0] * diff])
    assert torch.allclose(got, per.mean(1), rtol=1e-9, atol=1e-12)
    se = per.std(1) / math.sqrt(n)
    assert ((got - want).abs() < 4 * se).all(), (got, want, se)
    assert ((1.1 * want - got).abs() > 4 * se).all()  # calibration: a 10% error is detected

    # space 'x0' is the score-space gradient scaled by sigma_t^2 / a_t (same batch, fixed t)
    got_x0 = grads(DMDKL(1.0, space="x0").generator_loss(fields, gen)[0], params)
    assert torch.allclose(got_x0, sig2 / a * got, rtol=1e-9)


def test_dmd_kl_with_real_data_is_the_gradient_of_the_mixture_kl():
    """alpha < 1: fake = score of alpha p^theta + (1-alpha) p*.

    alpha E[(s_fake - s*) dx/dtheta] == grad KL(mix || p*), the KL by quadrature.
    """
    path, t, n, alpha = RectifiedFlow(), 0.3, 200_000, 0.6
    gen_model = GaussianGenerator(1.0, 0.6)
    m, sd = -0.5, 0.7
    mix = GaussianMixture([[1.0], [m]], [0.6, sd], weights=[alpha, 1 - alpha])
    fields = Fields(exact(GaussianMixture([[m]], sd), path), exact(mix, path), path, "x0")
    gen, _ = draw(path, gen_model, n, seed=2, t=t)
    params = [gen_model.c, gen_model.s]
    chunks = [grads(DMDKL(alpha).generator_loss(fields, gen_chunk)[0], params)
              for gen_chunk in _chunks(gen, 20)]
    got, se = mean_and_se(chunks)

    a = 1 - t
    c, s = (p.detach().clone().requires_grad_(True) for p in params)
    x = torch.linspace(-12, 12, 48_001, dtype=F64)
    p_star = normal_pdf(x, a * m, a**2 * sd**2 + t**2)
    p_mix = alpha * normal_pdf(x, a * c, a**2 * s**2 + t**2) + (1 - alpha) * p_star
    kl = torch.trapezoid(p_mix * torch.log(p_mix / p_star), x)
    want = grads(kl, [c, s])
    assert ((got - want).abs() < 4 * se + 1e-9).all(), (got, want, se)
    assert ((want / alpha - got).abs() > 4 * se).all()  # calibration: without the factor alpha it fails


def _chunks(sample, k):
    """Split a PathSample into k sub-batches that keep their autograd graph."""
    from dataclasses import replace
    n = sample.x_t.shape[0]
    size = n // k
    out = []
    for i in range(k):
        sl = slice(i * size, (i + 1) * size)
        out.append(replace(sample, x0=sample.x0[sl], x1=sample.x1[sl], t=sample.t[sl], x_t=sample.x_t[sl],
                           z=None if sample.z is None else sample.z[sl]))
    return out


# -- Lemma 1 -------------------------------------------------------------------------------------------
def _lemma1(objective, distance_fn, dim=1, fake_shift=0.0, n=200_000, k=20):
    """(mean, se) of grad[generator loss] - grad[E w D(f*, f^theta)] over k chunks, f the generator's field."""
    path = RectifiedFlow()
    if dim == 1:
        gen_model = GaussianGenerator(0.2, 1.1)
        teacher_law = GaussianMixture([[-1.0], [1.5]], [0.5, 0.4], weights=[0.3, 0.7])
    else:
        gen_model = GaussianGenerator([0.2, -0.1], 1.1)
        teacher_law = GaussianMixture([[-1.0, 0.0], [1.5, 1.0]], [0.5, 0.4], weights=[0.3, 0.7])
    teacher = exact(teacher_law, path)
    fields = Fields(teacher, exact(gen_model.law(fake_shift), path), path, "x0")
    params = [gen_model.c, gen_model.s]
    gen, _ = draw(path, gen_model, n, seed=3)
    diffs, scale = [], []
    for chunk in _chunks(gen, k):
        g_obj = grads(objective.generator_loss(fields, chunk)[0], params)
        # f^theta(x_t) = E[x0 | x_t] for x0 ~ N(c, s^2 I), differentiable in (c, s)
        a = (1 - chunk.t)[:, None]
        sig2 = chunk.t[:, None] ** 2
        c, s = gen_model.c, gen_model.s
        f_theta = c + a * s**2 / (a**2 * s**2 + sig2) * (chunk.x_t - a * c)
        g_dist = grads(fields.weighted_mean(chunk, distance_fn(teacher(chunk.x_t, chunk.t) - f_theta)), params)
        diffs.append(g_obj - g_dist)
        scale.append(g_dist)
    mean, se = mean_and_se(diffs)
    return mean, se, mean_and_se(scale)[0]


def test_lemma1_uid_gradient_is_the_gradient_of_the_uid_gap():
    mean, se, size = _lemma1(RealUID(), sq_norm)
    assert (mean.abs() < 4 * se).all() and (4 * se < 0.1 * size.abs()).all(), (mean, se, size)
    wrong, se_w, _ = _lemma1(RealUID(), sq_norm, fake_shift=0.3)  # calibration: f is not the generator's field
    assert (wrong.abs() > 4 * se_w).any(), (wrong, se_w)


def test_lemma1_analogue_for_the_normalized_distance():
    """Non-squared l2 (App. A.4), 2-D: gradient == grad E w ||f* - f^theta|| (envelope theorem, eps -> 0).

    In 1-D the direction (f - f*)/||f - f*|| is a sign function whose jump at f = f* carries a
    Dirac term that a small eps never samples (see NormalizedL2), so the check is in 2-D.
    """
    norm = lambda d: sq_norm(d).sqrt()  # noqa: E731
    mean, se, size = _lemma1(RealUID(distance=NormalizedL2(eps=1e-9)), norm, dim=2)
    assert (mean.abs() < 4 * se).all() and (4 * se < 0.1 * size.abs()).all(), (mean, se, size)
    wrong, se_w, _ = _lemma1(RealUID(distance=NormalizedL2(eps=1e-9)), norm, dim=2, fake_shift=0.3)
    assert (wrong.abs() > 4 * se_w).any(), (wrong, se_w)


# -- the fake optimum -----------------------------------------------------------------------------------
DATA = GaussianMixture([[-1.0], [1.5]], [0.5, 0.4], weights=[0.5, 0.5])
BIASED = GaussianMixture([[-1.0], [1.5]], [0.5, 0.4], weights=[0.8, 0.2])
PERTURBATIONS = {"constant": lambda x, t: torch.ones_like(x), "linear": lambda x, t: x,
                 "nonlinear": lambda x, t: torch.sin(2 * x) * (1 - t[:, None])}


def optimum(alpha, beta, gamma, path, gen_law, wrong=False):
    """DESIGN §3: f* + [beta p^th f^th + (1-beta) p* f^d - (alpha p^th + (1-alpha) p*) f*] / D,

    D = gamma p^th + (1-gamma) p*; ``wrong`` puts alpha in D in place of gamma.
    """
    f_star, f_gen, f_data = exact(BIASED, path), exact(gen_law, path), exact(DATA, path)

    def field(x, t):
        a, sigma = (1 - t)[:, None], t[:, None]
        p_g, p_d = mixture_density_t(gen_law, x, a, sigma), mixture_density_t(DATA, x, a, sigma)
        fs = f_star(x, t)
        num = beta * p_g * f_gen(x, t) + (1 - beta) * p_d * f_data(x, t) - (alpha * p_g + (1 - alpha) * p_d) * fs
        g = alpha if wrong else gamma
        return fs + num / (g * p_g + (1 - g) * p_d)
    return field


class Perturbed(nn.Module):
    """f + eps d, read as x0; eps is the leaf whose gradient is the directional derivative of the loss."""

    parameterization = "x0"

    def __init__(self, field, direction):
        super().__init__()
        self.field, self.direction = field, direction
        self.eps = nn.Parameter(torch.zeros((), dtype=F64))

    def forward(self, x, t, cond=None):
        return self.field(x, t) + self.eps * self.direction(x, t)


def _stationarity(objective, field, direction, gen_law, n=200_000, k=20):
    path = RectifiedFlow(t_min=0.02, t_max=0.98)
    fake = Perturbed(field, direction)
    fields = Fields(exact(BIASED, path), fake, path, "x0")
    gen_model = GaussianGenerator(float(gen_law.means[0, 0]), float(gen_law.covs[0, 0, 0]) ** 0.5)
    with torch.no_grad():
        gen, _, real = draw(path, gen_model, n, seed=4, real=DATA)
    values = []
    for g_chunk, r_chunk in zip(_chunks(gen, k), _chunks(real, k)):
        loss = objective.fake_loss(fields, g_chunk, r_chunk)[0]
        values.append(torch.autograd.grad(loss, fake.eps)[0])
    return mean_and_se(values)


@pytest.mark.parametrize("alpha, beta, gamma", [(0.7, 0.8, None), (0.8, 0.6, 0.4)])
def test_fake_optimum_is_the_pointwise_formula(alpha, beta, gamma):
    """d/d eps of the fake loss at f_opt + eps d is zero for every direction d (RealUM and general RealUID)."""
    path = RectifiedFlow(t_min=0.02, t_max=0.98)
    gen_law = GaussianMixture([[0.4]], 1.0)
    objective = RealUID(alpha, beta, gamma)
    g = alpha if gamma is None else gamma
    right, wrong = optimum(alpha, beta, g, path, gen_law), optimum(alpha, beta, g, path, gen_law, wrong=True)
    if gamma is None:  # for RealUM the 'wrong' variant is the formula with beta and alpha swapped
        wrong = optimum(beta, alpha, beta, path, gen_law)
    failures = 0
    for name, d in PERTURBATIONS.items():
        mean, se = _stationarity(objective, right, d, gen_law)
        assert abs(mean) < 4 * se, (name, mean, se)
        mean_w, se_w = _stationarity(objective, wrong, d, gen_law)
        failures += abs(mean_w) > 4 * se_w
    assert failures == len(PERTURBATIONS)  # calibration: the wrong formula is caught in every direction


# -- equilibrium: zero generator gradient -------------------------------------------------------------
class OptimalDiscriminator(nn.Module):
    """The discriminator at p^theta = p*: logit 0 everywhere (D = 1/2)."""

    def forward(self, x, t, cond=None):
        return 0 * x.flatten(1).sum(-1)


OBJECTIVES = {
    "UID": lambda: RealUID(), "RealUID": lambda: RealUID(0.94, 0.96), "RealUID-gamma": lambda: RealUID(0.9, 0.95, 0.8),
    "SiD": lambda: SiD(1.2), "SiD-a0": lambda: SiD(0.0), "RealSiD": lambda: SiD(1.2, 0.94, 0.96),
    "DMD-KL": lambda: DMDKL(1.0), "DMD-KL-real-x0": lambda: DMDKL(0.9, space="x0"),
    "normalized-UID": lambda: RealUID(distance=NormalizedL2()),
    "normalized-RealUID": lambda: RealUID(0.94, 0.96, distance=NormalizedL2()),
    "UID+GAN": lambda: WithGAN(RealUID(), OptimalDiscriminator()),
}


@pytest.mark.parametrize("name", OBJECTIVES)
def test_generator_gradient_vanishes_at_equilibrium(name):
    """Generator law == teacher's (== data's), exact fake field (another instance, read through velocity): grad 0."""
    path, n = RectifiedFlow(), 20_000
    gen_model = GaussianGenerator(0.3, 0.8)
    teacher = exact(gen_model.law(), path, "x0")
    params = [gen_model.c, gen_model.s]

    def grad_with(fake_law):
        fields = Fields(teacher, exact(fake_law, path, "velocity"), path, "x0")
        gen, _ = draw(path, gen_model, n, seed=5)
        return grads(OBJECTIVES[name]().generator_loss(fields, gen)[0], params)

    at_equilibrium = grad_with(gen_model.law())
    # calibration: a generator off the teacher's law (fake = its own exact field) has a clear gradient
    with torch.no_grad():
        gen_model.c += 0.5
    off = grad_with(gen_model.law())
    assert off.abs().max() > 1e-2, off
    assert at_equilibrium.abs().max() < 1e-6 * off.abs().max(), (at_equilibrium, off)


# -- parameter rules ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make, rule", [
    (lambda: SiD(a=-0.1), "SiD.a"), (lambda: SiD(a=float("nan")), "SiD.a"),
    (lambda: SiD(alpha=0.0), "SiD.alpha"), (lambda: SiD(beta=1.2), "SiD.beta"),
    (lambda: SiD(alpha=1.0, beta=0.9), "SiD.alpha = 1 requires SiD.beta = 1"),
    (lambda: DMDKL(alpha=0.0), "DMDKL.alpha"), (lambda: DMDKL(alpha=1.1), "DMDKL.alpha"),
    (lambda: DMDKL(space="velocity"), "DMDKL.space"),
    (lambda: RealUID(alpha=0.9, beta=1.01), "RealUID.beta"), (lambda: RealUID(0.9, 0.9, gamma=0.0), "RealUID.gamma"),
    (lambda: RealUID(alpha=1.0, beta=0.9), "RealUID.alpha = 1 requires RealUID.beta = 1"),
    (lambda: RealUID(0.9, 0.9, gamma=1.0), "RealUID.gamma = 1 requires"),
    (lambda: WithGAN(RealUID(), OptimalDiscriminator(), lambda_D=0.0), "WithGAN.lambda_D"),
    (lambda: WithGAN(RealUID(), OptimalDiscriminator(), lambda_G=-1.0), "WithGAN.lambda_G"),
    (lambda: WithGAN("RealUID", OptimalDiscriminator()), "WithGAN.objective"),
    (lambda: WithGAN(RealUID(), "head"), "WithGAN.head"),
])
def test_bad_parameters_name_the_rule(make, rule):
    with pytest.raises(UserError) as err:
        make()
    assert rule in err.value.message and "Fix:" in err.value.message, err.value.message


@pytest.mark.parametrize("kwargs, rule", [
    ({"alpha": 0.0}, "RealUID.alpha"), ({"alpha": 1.2}, "RealUID.alpha"), ({"beta": 0.0}, "RealUID.beta"),
    ({"beta": 1.01}, "RealUID.beta"), ({"alpha": 1.0, "beta": 0.9}, "RealUID.alpha = 1 requires RealUID.beta = 1"),
    ({"alpha": 0.9, "beta": 0.9, "gamma": 1.0}, "RealUID.gamma = 1 requires"), ({"gamma": -0.1}, "RealUID.gamma"),
])
def test_alpha_beta_gamma_rules_are_enforced(kwargs, rule):
    with pytest.raises(UserError) as err:
        RealUID(**kwargs)
    assert rule in err.value.message and "Fix:" in err.value.message


def test_sid_refuses_the_velocity_parameterisation(tmp_path):
    tr = trainer(tmp_path, "sid_vp_gmm.gin", "DistillationTrainer.parameterization = 'velocity'")
    gen, _ = tr.draw(with_grad=False)
    with pytest.raises(UserError) as err:
        tr.objective.generator_loss(tr.fields, gen)
    assert "DistillationTrainer.parameterization" in err.value.message


# -- one forward for the generated and the real batch ---------------------------------------------------------------
class CountingField(nn.Module):
    """An MLP field (x0 parameterisation) that counts its calls and the batch sizes it saw."""

    parameterization = "x0"

    def __init__(self, dim: int = 2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, 32), nn.SiLU(), nn.Linear(32, dim)).double()
        self.batches: list[int] = []

    def forward(self, x_t, t, cond=None):
        self.batches.append(x_t.shape[0])
        return self.net(torch.cat([x_t, t[:, None]], dim=1))


@pytest.mark.parametrize("make", [lambda: RealUID(0.94, 0.96), lambda: RealUID(0.9, 0.95, gamma=0.8),
                                  lambda: RealUID(0.94, 0.96, distance=NormalizedL2()), lambda: DMDKL(0.9)],
                         ids=["realuid", "general-gamma", "normalized", "dmd-kl-real"])
def test_fake_loss_of_the_concatenated_batch_equals_two_separate_losses(make):
    """The fake step puts generated and real samples through the networks as one batch (one call of 2B).

    Its loss and gradient equal the sum of the two batches' losses computed one call each (float64);
    calibration: the separate losses really differ (the real term is not a copy of the generated one).
    """
    path, data = RectifiedFlow(), GaussianMixture([[-2.0, 0.0], [2.0, 1.0]], 0.5)
    objective = make()
    fake, teacher_field = CountingField(), CountingField()
    fields = Fields(teacher_field, fake, path, "x0")
    gen, _, real = draw(path, GaussianGenerator([0.3, -0.2], 0.8), 64, seed=1, real=data)
    gen = gen.detach()

    loss, logs = objective.fake_loss(fields, gen, real)
    assert fake.batches == [128], fake.batches  # one call of generated + real
    joint_grad = grads(loss, list(fake.parameters()))

    separate = [objective._fake_parts(fields, [s], [c])[0]
                for s, c in ((gen, objective.on_generated), (real, objective.on_real))]
    assert fake.batches[1:] == [64, 64]
    assert torch.allclose(loss, separate[0] + separate[1], rtol=1e-12, atol=1e-12)
    assert torch.allclose(logs["fake_loss_real"], separate[1], rtol=1e-12, atol=1e-12)
    assert torch.allclose(joint_grad, grads(separate[0] + separate[1], list(fake.parameters())), rtol=1e-10,
                          atol=1e-12)
    assert not torch.allclose(separate[0], separate[1])


def test_conditions_that_do_not_stack_fall_back_to_one_call_per_batch():
    path = RectifiedFlow()
    gen, _, real = draw(path, GaussianGenerator([0.3, -0.2], 0.8), 16, seed=2,
                        real=GaussianMixture([[0.0, 0.0]], 1.0))
    from dataclasses import replace

    assert PathSample.concat(gen, real).x_t.shape[0] == 32
    assert PathSample.concat(replace(gen, cond="a"), replace(real, cond="b")) is None   # not tensors
    assert PathSample.concat(replace(gen, z=torch.zeros(16, 2, dtype=F64)), real) is None  # z in one only
    fake = CountingField()
    RealUID(0.94, 0.96).fake_loss(Fields(CountingField(), fake, path, "x0"), replace(gen.detach(), cond="a"),
                                  replace(real, cond="b"))
    assert fake.batches == [16, 16]
