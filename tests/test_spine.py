"""The spine's contract (issue 3): exact minimiser, UID == RealUID(1, 1), distillation to the truth."""

from __future__ import annotations

import pytest
import torch

from realuid.data.gmm import GaussianMixture
from realuid.engine.runner import build, run
from realuid.errors import UserError
from realuid.metrics.toy import MixtureMetrics
from realuid.objectives import RealUID
from realuid.paths import RectifiedFlow
from realuid.teachers.analytic import AnalyticTeacher

MEANS = [[-4.0, 0.0], [4.0, 0.0], [0.0, 6.928203]]


def _matching_excess(field, mixture, path, perturb, n=200_000, seed=0):
    """(L(f + d) - L(f), E w ||d||^2, standard error) on one float64 batch of the FM matching loss."""
    g = torch.Generator().manual_seed(seed)
    x0, _ = mixture.sample(n, g)
    x1 = torch.randn(n, 2, dtype=torch.float64, generator=g)
    t = path.t_min + (path.t_max - path.t_min) * torch.rand(n, dtype=torch.float64, generator=g)
    s = path.interpolate(x0, x1, t)
    target = path.target(s, "velocity")
    f = field(s.x_t, t)
    d = perturb(s.x_t, t)
    w = path.weight(t)
    excess = w * (((f + d - target) ** 2).sum(-1) - ((f - target) ** 2).sum(-1))
    return float(excess.mean()), float((w * (d**2).sum(-1)).mean()), float(excess.std() / n**0.5)


PERTURBATIONS = {
    "constant": lambda x, t: torch.tensor([0.3, -0.2], dtype=torch.float64).expand_as(x),
    "linear": lambda x, t: 0.3 * x.flip(-1) * t[:, None],
    "nonlinear": lambda x, t: 0.2 * torch.sin(x) * (1 - t[:, None]),
}


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_exact_fm_field_minimises_the_matching_loss(name):
    """L(f_exact + d) - L(f_exact) = E w ||d||^2: the cross term 2 E w <d, f - f_c> vanishes at the minimiser."""
    mixture, path = GaussianMixture(MEANS, 0.5), RectifiedFlow()
    teacher = AnalyticTeacher().bind(path, mixture, "velocity")
    excess, expected, stderr = _matching_excess(teacher, mixture, path, PERTURBATIONS[name])
    assert abs(excess - expected) < 4 * stderr + 1e-12, (excess, expected, stderr)

    # calibration: the field of a different mixture is not the minimiser, and the same check says so
    wrong = AnalyticTeacher(GaussianMixture(MEANS, 0.5, weights=[6.0, 1.0, 1.0])).bind(path, mixture, "velocity")
    excess, expected, stderr = _matching_excess(wrong, mixture, path, PERTURBATIONS[name])
    assert abs(excess - expected) > 4 * stderr, (excess, expected, stderr)


def _trainer(tmp_path, recipe, *binds, steps=3):
    trainer, _ = build(recipe, ["DistillationTrainer.dtype = 'float64'", f"DistillationTrainer.steps = {steps}",
                                "DistillationTrainer.batch_size = 256", *binds],
                       out=tmp_path / recipe.replace("/", "_"), progress=False)
    return trainer


def _train_and_record(trainer, steps=3):
    losses = [trainer.train_step() for _ in range(steps)]
    return losses, [p.detach().clone() for p in trainer.generator.parameters()] + \
        [p.detach().clone() for p in trainer.fake.parameters()]


def test_realuid_with_alpha_beta_one_is_uid_bit_for_bit(tmp_path):
    """Same seed, same batch: RealUID(1, 1) losses and updated weights equal UID's exactly."""
    uid = _trainer(tmp_path, "gin/uid_fm_gmm.gin")
    real = _trainer(tmp_path, "gin/realuid_fm_gmm.gin", "RealUID.alpha = 1.0", "RealUID.beta = 1.0")
    assert not real.objective.uses_real_data
    uid_losses, uid_params = _train_and_record(uid)
    real_losses, real_params = _train_and_record(real)
    for a, b in zip(uid_losses, real_losses):
        for key in ("fake_loss", "generator_loss", "uid_gap"):
            assert torch.equal(a[key], b[key]), key
    assert all(torch.equal(a, b) for a, b in zip(uid_params, real_params))

    # one generator-loss gradient on a shared batch, through the engine's own fields
    gen, _ = uid.draw(with_grad=True)
    grads = []
    for objective in (RealUID(), RealUID(alpha=1.0, beta=1.0)):
        uid.generator.zero_grad()
        objective.generator_loss(uid.fields, gen)[0].backward(retain_graph=True)
        grads.append([p.grad.clone() for p in uid.generator.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))

    # calibration: with real data in the loss the same comparison differs
    other = _trainer(tmp_path, "gin/realuid_fm_gmm.gin")
    other_losses, _ = _train_and_record(other)
    assert not torch.equal(other_losses[0]["fake_loss"], uid_losses[0]["fake_loss"])


def quality_ok(metrics: dict) -> bool:
    """The bar a distilled student must clear (and a wrong generator must not)."""
    return metrics["sw_rel"] < 0.08 and metrics["mode_weight_error"] < 0.05 and metrics["on_mode"] > 0.85


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["gin/uid_fm_gmm.gin", "gin/realuid_fm_gmm.gin"])
def test_distillation_reaches_the_exact_mixture(tmp_path, recipe):
    trainer = run(recipe, ["DistillationTrainer.steps = 1200", "DistillationTrainer.eval_every = 1200",
                           "DistillationTrainer.checkpoint_every = 1200", "DistillationTrainer.eval_samples = 10000"],
                  out=tmp_path / "run", progress=False)
    final = trainer.log.rows()[-1]
    assert quality_ok(final), final
    samples = torch.from_numpy(__import__("numpy").load(tmp_path / "run" / "samples.npy"))
    assert samples.shape == (10000, 2)


def test_quality_bar_rejects_wrong_generators():
    """Calibration of :func:`quality_ok`: true samples pass, an untrained generator and another mixture fail."""
    mixture = GaussianMixture(MEANS, 0.5)
    metric = MixtureMetrics().bind(mixture)
    g = torch.Generator().manual_seed(3)
    assert quality_ok(metric(mixture.sample(10000, g)[0]))
    untrained = 0.05 * torch.randn(10000, 2, generator=g, dtype=torch.float64) + torch.tensor([0.1, 0.2])
    assert not quality_ok(metric(untrained))
    skewed = GaussianMixture(MEANS, 0.5, weights=[0.42, 0.29, 0.29])
    assert not quality_ok(metric(skewed.sample(10000, g)[0]))
    shifted = GaussianMixture([[m[0] + 0.5, m[1]] for m in MEANS], 0.5)
    assert not quality_ok(metric(shifted.sample(10000, g)[0]))


@pytest.mark.parametrize("kwargs, rule", [
    ({"alpha": 0.0}, "RealUID.alpha"), ({"alpha": 1.2}, "RealUID.alpha"), ({"beta": 0.0}, "RealUID.beta"),
    ({"beta": 1.01}, "RealUID.beta"), ({"alpha": 1.0, "beta": 0.9}, "RealUID.alpha = 1 requires RealUID.beta = 1"),
    ({"alpha": 0.9, "beta": 0.9, "gamma": 1.0}, "RealUID.gamma = 1 requires"), ({"gamma": -0.1}, "RealUID.gamma"),
])
def test_alpha_beta_gamma_rules_are_enforced(kwargs, rule):
    with pytest.raises(UserError) as err:
        RealUID(**kwargs)
    assert rule in err.value.message and "Fix:" in err.value.message


def test_biased_teacher_takes_its_own_bindings(tmp_path):
    trainer = _trainer(tmp_path, "gin/uid_fm_gmm.gin", "AnalyticTeacher.mixture = @teacher/GaussianMixture()",
                       "teacher/GaussianMixture.weights = [2.0, 1.0, 1.0]")
    assert torch.allclose(trainer.teacher.mixture.weights, torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    assert torch.allclose(trainer.data.weights, torch.full((3,), 1 / 3, dtype=torch.float64))


def test_gmm_bindings_change_the_data(tmp_path):
    trainer = _trainer(tmp_path, "gin/uid_fm_gmm.gin", "GaussianMixture.means = [[0.0, 0.0], [3.0, 3.0]]",
                       "GaussianMixture.stds = [0.3, 0.6]", "GaussianMixture.weights = [1.0, 3.0]")
    assert trainer.data.means.tolist() == [[0.0, 0.0], [3.0, 3.0]]
    assert torch.allclose(trainer.data.weights, torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert torch.allclose(trainer.data.covs[1], 0.36 * torch.eye(2, dtype=torch.float64))
