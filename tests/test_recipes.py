"""Every toy recipe (gin/*_gmm.gin) runs through the engine and improves on its initial generator (issue 5).

Each recipe is run briefly with :func:`realuid.engine.runner.run` and its
final sliced Wasserstein distance to the true mixture is compared with the
SW of the same generator before training (same seed, so the same initial
weights, measured on the same noise by the same metric). A recipe passes if
training cut the SW by at least ``IMPROVEMENT``; the calibration test shows
that a run with a learning rate of ~0 fails the same bar.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from realuid.engine.runner import build, run
from realuid.metrics.toy import MixtureMetrics

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.name for p in (ROOT / "gin").glob("*_gmm.gin"))
SECOND_STAGES = {"realuid_ft_fm_gmm.gin": "realuid_fm_gmm.gin"}  # recipe -> its first stage
IMPROVEMENT = 0.75  # final SW must be below 75% of the initial SW
STEPS = 200
# Recipes that need a longer brief run to leave the one-mode phase every run starts with
# (measured at 200 steps: SW ratio 0.85 for realuid_fm, 0.89-0.91 for the DMD-KL recipes; 0.41-0.48 at 300).
# DMD-KL with real data sits at the edge at 300: seed 0 gave ratio 0.54 with the generated and real batches
# through the fake model in two calls and 0.89 (one mode) with the same batches in one call (float rounding
# alone, chaotic trajectory); 0.43 at 400 steps.
LONGER = {"realuid_fm_gmm.gin": 300, "dmd_kl_vp_gmm.gin": 300, "dmd_kl_real_vp_gmm.gin": 400}
# Recipes measured to stay on one mode far longer than a brief run (SW ratio 0.99-1.05 after 600 steps on
# seed 0; FGM and normalized UID reach two of the three modes after ~750 steps, EDM UID never in 2000):
# a finding about these objectives on this mixture, kept visible (strict: a fix makes the test fail until
# the mark is removed).
STUCK = {
    "fgm_fm_gmm.gin": "velocity-space UID (FGM) stays on one mode for >600 steps on this mixture",
    "normalized_uid_fm_gmm.gin": "the non-squared distance stays on one mode for >600 steps on this mixture",
    "normalized_realuid_fm_gmm.gin": "the non-squared distance stays on one mode for >600 steps on this mixture",
    "uid_edm_gmm.gin": "UID on the EDM toy teacher stays on one mode for 2000 steps (measured, issue 5)",
}


def binds_for(steps: int, warmup: bool = True) -> list[str]:
    binds = [f"DistillationTrainer.steps = {steps}", f"DistillationTrainer.eval_every = {steps}",
             f"DistillationTrainer.checkpoint_every = {steps}", "DistillationTrainer.eval_samples = 2000",
             "DistillationTrainer.batch_size = 256"]
    return binds + (["DistillationTrainer.warmup_steps = 20"] if warmup else [])


BINDS = binds_for(STEPS)


def _sw(trainer) -> float:
    metric = MixtureMetrics().bind(trainer.data)
    return metric(trainer.sample(2000))["sw"]


def _initial_and_final(recipe: str, tmp_path: Path, binds: list[str]) -> tuple[float, float]:
    initial, _ = build(ROOT / "gin" / recipe, binds, out=tmp_path / "initial", progress=False)
    before = _sw(initial)
    trainer = run(ROOT / "gin" / recipe, binds, out=tmp_path / "run", progress=False)
    after = trainer.log.rows()[-1]["sw"]
    return before, after


@pytest.fixture(autouse=True)
def _from_repository_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes include 'gin/base/...' relative to the repository root


def test_every_toy_recipe_is_listed():
    expected = {"uid_fm_gmm.gin", "realuid_fm_gmm.gin", "fgm_fm_gmm.gin", "sid_vp_gmm.gin", "sid_as_uid_gmm.gin",
                "realsid_vp_gmm.gin", "dmd_kl_vp_gmm.gin", "dmd_kl_real_vp_gmm.gin", "realuid_ft_fm_gmm.gin",
                "uid_gan_fm_gmm.gin", "normalized_uid_fm_gmm.gin", "normalized_realuid_fm_gmm.gin",
                "ibmd_bridge_gmm.gin"}
    assert expected <= set(RECIPES), expected - set(RECIPES)


def _param(recipe: str):
    if recipe in STUCK:
        return pytest.param(recipe, marks=pytest.mark.xfail(reason=STUCK[recipe], strict=True))
    return recipe


@pytest.mark.parametrize("recipe", [_param(r) for r in RECIPES])
def test_recipe_improves_sw_over_the_initial_generator(recipe, tmp_path):
    binds = binds_for(LONGER.get(recipe, STEPS))
    if recipe not in SECOND_STAGES:
        before, after = _initial_and_final(recipe, tmp_path, binds)
        assert after < IMPROVEMENT * before, f"{recipe}: SW {before:.3f} before training, {after:.3f} after"
        return
    # a second stage: stage one from its untrained generator, then this recipe from stage one's generator;
    # the pipeline must improve on the untrained generator and the second stage must keep stage one's gain
    first = SECOND_STAGES[recipe]
    untrained, stage1 = _initial_and_final(first, tmp_path / "stage1", binds_for(LONGER.get(first, STEPS)))
    checkpoint = tmp_path / "stage1" / "run"
    binds = binds_for(STEPS, warmup=False) + [f"DistillationTrainer.generator_checkpoint = '{checkpoint}'"]
    start, after = _initial_and_final(recipe, tmp_path / "stage2", binds)
    assert start == pytest.approx(stage1)  # the second stage starts from stage one's EMA generator
    assert after < IMPROVEMENT * untrained and after < 1.1 * stage1, (untrained, stage1, after)


def test_improvement_bar_rejects_a_run_that_does_not_learn(tmp_path):
    """Calibration: the same bar fails when the generator barely moves (learning rate 1e-9)."""
    before, after = _initial_and_final("uid_vp_gmm.gin", tmp_path,
                                       [*BINDS, "DistillationTrainer.lr_generator = 1e-9"])
    assert not after < IMPROVEMENT * before, (before, after)


def test_second_stage_starts_from_the_first_stage_generator(tmp_path):
    """realuid_ft: the generator is the first stage's EMA generator, the objective has the new alpha, beta."""
    first = tmp_path / "first"
    stage1 = run(ROOT / "gin" / "realuid_fm_gmm.gin", binds_for(5), out=first, progress=False)
    stage2, _ = build(ROOT / "gin" / "realuid_ft_fm_gmm.gin",
                      [*binds_for(5, warmup=False), f"DistillationTrainer.generator_checkpoint = '{first}'"],
                      out=tmp_path / "second", progress=False)
    for a, b in zip(stage1.ema.model.parameters(), stage2.generator.parameters()):
        assert torch.equal(a.detach().to(b.dtype), b.detach())
    assert (stage2.objective.alpha, stage2.objective.beta) == (0.92, 0.86)
    assert stage2.sched_generator.get_last_lr()[0] == pytest.approx(3e-4)  # no warm-up: full lr at step 0
