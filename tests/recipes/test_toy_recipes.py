"""Every toy recipe (gin/*_gmm.gin) learns: one parametrised test, each recipe with the budget and the bar it was
measured at, each bar calibrated.

A case runs a recipe through :func:`realuid.engine.runner.run` and compares its final evaluation with the metrics of
the same generator before training (same seed, so the same initial weights, measured on the same noise by the same
metrics). Bars:

* ``improves`` (every recipe without one of the two bars below, a brief run of 200-400 steps): training cuts the
  sliced Wasserstein distance to the true mixture by at least ``IMPROVEMENT``;
* ``exact`` (the flow-matching spine, 1200 steps): the distilled student reaches the exact mixture
  (:func:`quality_ok`: SW, mode weights, samples on the modes);
* ``on the way`` (each path family, 500 steps): most samples on the true modes and SW well down, where the
  untrained generator is neither (:func:`on_the_way`).

Calibrations: a learning rate of ~0 fails ``improves``; true samples pass ``quality_ok`` and wrong generators fail it;
a generator distilled from a wrong teacher fails ``on_the_way``; a bridge with too little noise fails ``distilled``.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from helpers import GIN
from realuid.context import RunContext
from realuid.data.gmm import GaussianMixture
from realuid.engine.runner import build, run
from realuid.metrics.toy import MixtureMetrics
from realuid.paths import RectifiedFlow

pytestmark = pytest.mark.usefixtures("one_thread", "from_repository_root")   # tests/conftest.py

RECIPES = sorted(p.name for p in GIN.glob("*_gmm.gin"))
SECOND_STAGES = {"realuid_ft_fm_gmm.gin": "realuid_fm_gmm.gin"}  # recipe -> its first stage
IMPROVEMENT = 0.75  # final SW must be below 75% of the initial SW
BRIEF = 200
# Recipes that need a longer brief run to leave the one-mode phase every run starts with
# (measured at 200 steps: SW ratio 0.85 for realuid_fm, 0.89-0.91 for the DMD-KL recipes; 0.41-0.48 at 300).
# DMD-KL with real data sits at the edge at 300: seed 0 gave ratio 0.54 with the generated and real batches
# through the fake model in two calls and 0.89 (one mode) with the same batches in one call (float rounding
# alone, chaotic trajectory); 0.43 at 400 steps.
# (uid_fm, torch 2.14.1, this CPU, seed 0: SW ratio 0.81 at 200 steps, still one mode, 0.41 at 300; uid_edm,
# generator width 128 (before its depth-4 generator): 0.94 at 200, one mode, 0.46 at 400, 0.24 at 600. Both are
# checked by the longer ``exact`` and ``on the way`` runs instead; realuid_fm's budget is its brief first stage
# before realuid_ft_fm.)
LONGER = {"realuid_fm_gmm.gin": 300, "dmd_kl_vp_gmm.gin": 300, "dmd_kl_real_vp_gmm.gin": 400}
# Recipes whose generator starts as a Gaussian covering the modes (OneStepGenerator.skip) instead of one point:
# normalized UID stayed on one mode for >600 steps from one point (docs/RESULTS.md, "Do the toy recipes keep every mode?").
SKIP_STARTS = ["normalized_uid_fm_gmm.gin", "normalized_realuid_fm_gmm.gin"]
FAMILIES = ["vp", "ve", "edm", "si", "bridge"]   # the paths beside flow matching: the 'on the way' cases
EXACT = ("uid_fm_gmm.gin", "realuid_fm_gmm.gin")   # the flow-matching spine: the 'exact' cases
FAMILY_RECIPES = tuple(f"uid_{family}_gmm.gin" for family in FAMILIES)
MEANS = [[-4.0, 0.0], [4.0, 0.0], [0.0, 6.928203]]
SHIFTED_TEACHER = ["AnalyticTeacher.mixture = @teacher/GaussianMixture()",
                   "teacher/GaussianMixture.means = [[-1.0, 3.0], [7.0, 3.0], [3.0, 9.928203]]"]


# -- the bars ----------------------------------------------------------------------------------------------------------
def quality_ok(metrics: dict) -> bool:
    """The bar a distilled student must clear (and a wrong generator must not)."""
    return metrics["sw_rel"] < 0.08 and metrics["mode_weight_error"] < 0.05 and metrics["on_mode"] > 0.85


def on_the_way(metrics: dict) -> bool:
    """The bar of a short run (300-500 steps): most samples on the true modes and SW well down (full runs:
    sw_rel < 0.08).

    Short runs have not settled the mode weights yet (a mode is often still
    missing at step 500), so this bar checks positions; :func:`distilled`
    checks weights where a short run settles them.
    """
    return metrics["sw_rel"] < 0.6 and metrics["on_mode"] > 0.25


def distilled(metrics: dict) -> bool:
    """The full bar (as :func:`quality_ok`, with a looser SW for a short run)."""
    return metrics["sw_rel"] < 0.15 and metrics["mode_weight_error"] < 0.05 and metrics["on_mode"] > 0.8


def check_improves(recipe, before, after):
    assert after["sw"] < IMPROVEMENT * before["sw"], \
        f"{recipe}: SW {before['sw']:.3f} before training, {after['sw']:.3f} after"


def check_exact(recipe, before, after):
    assert quality_ok(after), (recipe, after)


def check_on_the_way(recipe, before, after):
    assert on_the_way(after), (recipe, after)
    # calibration: the same recipe's untrained generator fails the bar, by far
    assert not on_the_way(before), (recipe, before)
    assert after["sw_rel"] < 0.6 * before["sw_rel"], (recipe, after["sw_rel"], before["sw_rel"])


CHECKS = {"improves": check_improves, "exact": check_exact, "on the way": check_on_the_way}


# -- the cases ---------------------------------------------------------------------------------------------------------
def brief_binds(steps: int, warmup: bool = True) -> list[str]:
    binds = [f"TrainingLoop.steps = {steps}", f"TrainingLoop.eval_every = {steps}",
             f"TrainingLoop.checkpoint_every = {steps}", "TrainingLoop.eval_samples = 2000",
             "TrainingLoop.batch_size = 256"]
    return binds + (["DistillationTrainer.warmup_steps = 20"] if warmup else [])


def family_binds(steps: int) -> list[str]:
    return [f"TrainingLoop.steps = {steps}", f"TrainingLoop.eval_every = {steps}",
            f"TrainingLoop.checkpoint_every = {steps}", "TrainingLoop.eval_samples = 4000",
            "TrainingLoop.batch_size = 256", "DistillationTrainer.warmup_steps = 50"]


def exact_binds(steps: int) -> list[str]:
    return [f"TrainingLoop.steps = {steps}", f"TrainingLoop.eval_every = {steps}",
            f"TrainingLoop.checkpoint_every = {steps}", "TrainingLoop.eval_samples = 10000"]


@dataclass
class Case:
    recipe: str
    bar: str
    steps: int
    binds: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.recipe.removesuffix('.gin')}-{self.bar.replace(' ', '-')}-{self.steps}"


def cases() -> list:
    """``improves`` for every recipe that has no stronger bar below (``exact`` and ``on the way`` imply it)."""
    out = []
    for recipe in RECIPES:
        if recipe in EXACT or recipe in FAMILY_RECIPES:
            continue
        steps = LONGER.get(recipe, BRIEF)
        case = Case(recipe, "improves", steps, brief_binds(steps))
        out.append(pytest.param(case, id=case.id))
    for recipe in EXACT:
        case = Case(recipe, "exact", 1200, exact_binds(1200))
        out.append(pytest.param(case, id=case.id))
    for recipe in FAMILY_RECIPES:
        case = Case(recipe, "on the way", 500, family_binds(500))
        out.append(pytest.param(case, id=case.id))
    return out


def initial_metrics(recipe, binds, out) -> dict:
    """Every metric of the recipe's untrained generator (same seed: the run's initial weights), on its eval noise."""
    loop, _ = build(GIN / recipe, binds, out=out, progress=False)
    samples = loop.trainer.sample(loop.eval_samples)
    metrics = {}
    for metric in loop.trainer.metrics:
        metrics.update(metric(samples))
    return metrics


def initial_and_final(recipe: str, tmp_path, binds: list[str]) -> tuple[dict, dict]:
    before = initial_metrics(recipe, binds, tmp_path / "initial")
    loop = run(GIN / recipe, binds, out=tmp_path / "run", progress=False)
    return before, loop.log.rows()[-1]


def test_every_toy_recipe_is_listed():
    expected = {"uid_fm_gmm.gin", "realuid_fm_gmm.gin", "fgm_fm_gmm.gin", "sid_vp_gmm.gin", "sid_as_uid_gmm.gin",
                "realsid_vp_gmm.gin", "dmd_kl_vp_gmm.gin", "dmd_kl_real_vp_gmm.gin", "realuid_ft_fm_gmm.gin",
                "uid_gan_fm_gmm.gin", "normalized_uid_fm_gmm.gin", "normalized_realuid_fm_gmm.gin",
                "ibmd_bridge_gmm.gin", *FAMILY_RECIPES}
    assert expected <= set(RECIPES), expected - set(RECIPES)
    assert {param.values[0].recipe for param in cases()} == set(RECIPES)   # every recipe has a bar


@pytest.mark.slow
@pytest.mark.parametrize("case", cases())
def test_recipe_learns(case: Case, tmp_path):
    if case.recipe in SECOND_STAGES:
        # a second stage: stage one from its untrained generator, then this recipe from stage one's generator;
        # the pipeline must improve on the untrained generator and the second stage must keep stage one's gain
        first = SECOND_STAGES[case.recipe]
        untrained, stage1 = initial_and_final(first, tmp_path / "stage1", brief_binds(LONGER.get(first, BRIEF)))
        checkpoint = tmp_path / "stage1" / "run"
        binds = brief_binds(case.steps, warmup=False) + [f"DistillationTrainer.generator_checkpoint = '{checkpoint}'"]
        start, after = initial_and_final(case.recipe, tmp_path / "stage2", binds)
        assert start["sw"] == pytest.approx(stage1["sw"])  # the second stage starts from stage one's EMA generator
        assert after["sw"] < IMPROVEMENT * untrained["sw"] and after["sw"] < 1.1 * stage1["sw"], \
            (untrained["sw"], stage1["sw"], after["sw"])
        return
    before = None if case.bar == "exact" else initial_metrics(case.recipe, case.binds, tmp_path / "initial")
    after = run(GIN / case.recipe, case.binds, out=tmp_path / "run", progress=False).log.rows()[-1]
    CHECKS[case.bar](case.recipe, before, after)
    if case.bar == "exact":
        samples = np.load(tmp_path / "run" / "samples.npy")
        assert samples.shape == (10000, 2)


@pytest.mark.parametrize("recipe", SKIP_STARTS)
def test_a_skip_generator_starts_on_every_mode_and_a_plain_one_on_one_point(recipe, tmp_path):
    """The cause of the one-mode phase: an untrained x0 generator is nearly one point; with the recipe's
    ``OneStepGenerator.skip`` it is a Gaussian that puts mass on every mode (no training: build only)."""
    binds = brief_binds(BRIEF)
    start = initial_metrics(recipe, binds, tmp_path / "skip")
    assert min(start["mode_weights"]) > 0.1, start["mode_weights"]
    point = initial_metrics(recipe, [*binds, "OneStepGenerator.skip = 0.0"], tmp_path / "point")
    assert max(point["mode_weights"]) > 0.99, point["mode_weights"]   # calibration: without it, one mode


# -- calibrations of the bars ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_improvement_bar_rejects_a_run_that_does_not_learn(tmp_path):
    """The same bar fails when the generator barely moves (learning rate 1e-9)."""
    before, after = initial_and_final("uid_vp_gmm.gin", tmp_path,
                                      [*brief_binds(BRIEF), "DistillationTrainer.lr_generator = 1e-9"])
    assert not after["sw"] < IMPROVEMENT * before["sw"], (before["sw"], after["sw"])


@pytest.mark.slow
def test_quality_bar_rejects_wrong_generators():
    """True samples pass :func:`quality_ok`; an untrained generator and another mixture fail."""
    mixture = GaussianMixture(MEANS, 0.5)
    metric = MixtureMetrics().attach(RunContext(RectifiedFlow(), "velocity", mixture))
    g = torch.Generator().manual_seed(3)
    assert quality_ok(metric(mixture.sample(10000, g)[0]))
    untrained = 0.05 * torch.randn(10000, 2, generator=g, dtype=torch.float64) + torch.tensor([0.1, 0.2])
    assert not quality_ok(metric(untrained))
    skewed = GaussianMixture(MEANS, 0.5, weights=[0.42, 0.29, 0.29])
    assert not quality_ok(metric(skewed.sample(10000, g)[0]))
    shifted = GaussianMixture([[m[0] + 0.5, m[1]] for m in MEANS], 0.5)
    assert not quality_ok(metric(shifted.sample(10000, g)[0]))


@pytest.mark.slow
def test_a_generator_distilled_from_a_wrong_teacher_fails_the_bar(tmp_path):
    """Calibration of :func:`on_the_way` with a trained but wrong generator: the teacher knows a mixture shifted
    by (3, 3)."""
    loop = run(GIN / "uid_vp_gmm.gin", family_binds(300) + SHIFTED_TEACHER, out=tmp_path / "vp", progress=False)
    final = loop.log.rows()[-1]
    assert not on_the_way(final), final


@pytest.mark.slow
def test_the_bridge_recipe_settles_the_mode_weights_of_its_bimodal_conditional(tmp_path):
    """Given x1 near y = 0 the clean point is either lower mode: a collapsed G(z, x1) loses a third of the mass."""
    loop = run(GIN / "uid_bridge_gmm.gin", family_binds(450), out=tmp_path / "run", progress=False)
    final = loop.log.rows()[-1]
    assert distilled(final), final
    # calibration: a bridge with too little noise (eps = 1) collapses the conditional in the same budget
    narrow = run(GIN / "uid_bridge_gmm.gin", family_binds(450) + ["BrownianBridge.eps = 1.0"],
                 out=tmp_path / "narrow", progress=False)
    assert not distilled(narrow.log.rows()[-1]), narrow.log.rows()[-1]


CUSTOM_PATH = '''
    """A matching path registered outside the package: x_t = (1 - t^2) x0 + t^2 x1."""
    from realuid.paths import AffinePath, PathCoefficients
    from realuid.components import register


    @register("path")
    class OutsideQuadraticFlow(AffinePath):
        """Quadratic-time flow x_t = (1 - t^2) x0 + t^2 x1 (a user's path, for the registry test)."""

        def __init__(self, t_min: float = 1e-3, t_max: float = 1.0):
            super().__init__(t_min, t_max)

        def coefficients(self, t):  # the schedule; velocity, x0, epsilon and score targets follow from it
            return PathCoefficients(a=1 - t**2, da=-2 * t, b=t**2, db=2 * t)
'''

CUSTOM_RECIPE = '''
    # UID with a path that lives outside the package, registered by the import below.
    import realuid_outside_path
    include '{base}'
    DistillationTrainer.path = @OutsideQuadraticFlow()
    OutsideQuadraticFlow.t_min = 0.001
    DistillationTrainer.objective = @RealUID()
'''


@pytest.mark.slow
def test_a_path_registered_outside_the_package_distils_by_recipe_alone(tmp_path, monkeypatch):
    (tmp_path / "realuid_outside_path.py").write_text(textwrap.dedent(CUSTOM_PATH))
    recipe = tmp_path / "outside.gin"
    recipe.write_text(textwrap.dedent(CUSTOM_RECIPE.format(base=GIN / "base" / "gmm_2d.gin")))
    monkeypatch.syspath_prepend(str(tmp_path))  # what `realuid run --import FILE.py` does for the file's folder
    loop = run(str(recipe), family_binds(500), imports=[str(tmp_path / "realuid_outside_path.py")],
               out=tmp_path / "run", progress=False)
    assert type(loop.trainer.path).__name__ == "OutsideQuadraticFlow"
    assert "OutsideQuadraticFlow" in (tmp_path / "run" / "config.gin").read_text()
    final = loop.log.rows()[-1]
    assert on_the_way(final), final

    from realuid.components import components
    assert "OutsideQuadraticFlow" in {c.name for c in components("path")}
