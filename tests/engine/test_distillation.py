"""The DistillationTrainer: RealUID(1, 1) trains exactly as UID, the teacher and data take their own bindings, a
bridge needs a paired coupling and conditions the generator, the GAN head trains with the fake model, and a second
stage starts from the first stage's EMA generator."""

from __future__ import annotations

import pytest
import torch

from helpers import build_loop
from realuid.engine.runner import build, run
from realuid.errors import UserError
from realuid.objectives import RealUID

pytestmark = pytest.mark.usefixtures("one_thread", "from_repository_root")   # tests/conftest.py


def _trainer(tmp_path, recipe, *binds, steps=3):
    """A recipe's trainer in float64, built and not run."""
    return build_loop(recipe, tmp_path / recipe.replace("/", "_"), "TrainingLoop.dtype = 'float64'",
                      f"TrainingLoop.steps = {steps}", "TrainingLoop.batch_size = 256", *binds).trainer


def _train_and_record(trainer, steps=3):
    losses = [trainer.train_step() for _ in range(steps)]
    return losses, [p.detach().clone() for p in trainer.generator.parameters()] + \
        [p.detach().clone() for p in trainer.fake.parameters()]


def test_realuid_with_alpha_beta_one_is_uid_bit_for_bit(tmp_path):
    """Same seed, same batch: RealUID(1, 1) losses and updated weights equal UID's exactly."""
    # the main job's own generator and schedule (gin/realuid_fm_gmm.gin), bound on the UID side too
    main_job = ["OneStepGenerator.noise_scale = 3.0", "generator/MLP.depth = 4", "DistillationTrainer.fake_steps = 2",
                "DistillationTrainer.lr_final = 0.01", "DistillationTrainer.ema_decay = 0.999"]
    uid = _trainer(tmp_path, "uid_fm_gmm.gin", *main_job)
    real = _trainer(tmp_path, "realuid_fm_gmm.gin", "RealUID.alpha = 1.0", "RealUID.beta = 1.0")
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
    other = _trainer(tmp_path, "realuid_fm_gmm.gin")
    other_losses, _ = _train_and_record(other)
    assert not torch.equal(other_losses[0]["fake_loss"], uid_losses[0]["fake_loss"])


def test_biased_teacher_takes_its_own_bindings(tmp_path):
    trainer = _trainer(tmp_path, "uid_fm_gmm.gin", "AnalyticTeacher.mixture = @teacher/GaussianMixture()",
                       "teacher/GaussianMixture.weights = [2.0, 1.0, 1.0]")
    assert torch.allclose(trainer.teacher.mixture.weights, torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    assert torch.allclose(trainer.data.weights, torch.full((3,), 1 / 3, dtype=torch.float64))


def test_a_bridge_recipe_without_a_paired_coupling_is_refused(tmp_path):
    with pytest.raises(UserError) as err:
        build("gin/uid_bridge_gmm.gin", ["DistillationTrainer.coupling = @IndependentGaussian()"],
              out=tmp_path / "run", progress=False)
    message = err.value.message
    assert "BrownianBridge needs a paired coupling" in message and "PairedDegradation" in message


def test_the_bridge_generator_sees_the_corrupted_end(tmp_path):
    trainer = build_loop("uid_bridge_gmm.gin", tmp_path / "run", "TrainingLoop.steps = 10",
                         "TrainingLoop.batch_size = 256").trainer
    gen, _ = trainer.draw(with_grad=False)
    assert gen.cond is gen.x1 and gen.x1.shape == gen.x0.shape
    # the same z with two different conditions gives two different samples
    z = torch.randn(8, 2)
    with torch.no_grad():
        assert not torch.allclose(trainer.generator(z, torch.zeros(8, 2)), trainer.generator(z, torch.ones(8, 2)))


def test_gan_head_is_trained_with_the_fake_model_and_checkpointed(tmp_path):
    loop = build_loop("uid_gan_fm_gmm.gin", tmp_path / "run", "TrainingLoop.dtype = 'float64'",
                      "TrainingLoop.steps = 3", "TrainingLoop.batch_size = 128", "DistillationTrainer.warmup_steps = 0")
    tr = loop.trainer
    head = tr.objective.head
    assert tr.objective.uses_real_data and any(m is head for m in tr.objective_modules)
    before = [p.detach().clone() for p in head.parameters()]
    logs = tr.fake_step()
    assert "disc_loss" in logs
    assert any(not torch.equal(a, b) for a, b in zip(before, head.parameters()))
    # the generator step trains the generator only; its loss has the adversarial part and leaves no head gradient
    for p in head.parameters():
        p.grad = None
    after_fake = [p.detach().clone() for p in head.parameters()]
    logs = tr.generator_step()
    assert "gan_generator_loss" in logs
    assert all(torch.equal(a, b) for a, b in zip(after_fake, head.parameters()))
    assert all(p.grad is None for p in head.parameters())
    assert {f"0.{k}" for k in head.state_dict()} <= set(loop.state_dict()["objective"])


def _brief(steps: int, warmup: bool = True) -> list[str]:
    binds = [f"TrainingLoop.steps = {steps}", f"TrainingLoop.eval_every = {steps}",
             f"TrainingLoop.checkpoint_every = {steps}", "TrainingLoop.eval_samples = 2000",
             "TrainingLoop.batch_size = 256"]
    return binds + (["DistillationTrainer.warmup_steps = 20"] if warmup else [])


def test_second_stage_starts_from_the_first_stage_generator(tmp_path):
    """realuid_ft: the generator is the first stage's EMA generator, the objective has the new alpha, beta."""
    first = tmp_path / "first"
    stage1 = run("gin/realuid_fm_gmm.gin", _brief(5), out=first, progress=False)
    stage2 = build_loop("realuid_ft_fm_gmm.gin", tmp_path / "second", *_brief(5, warmup=False),
                        f"DistillationTrainer.generator_checkpoint = '{first}'")
    for a, b in zip(stage1.trainer.ema.model.parameters(), stage2.trainer.generator.parameters()):
        assert torch.equal(a.detach().to(b.dtype), b.detach())
    assert (stage2.trainer.objective.alpha, stage2.trainer.objective.beta) == (0.92, 0.86)
    assert stage2.learning_rates()["lr_generator"] == pytest.approx(3e-4)  # no warm-up: full lr at step 0
