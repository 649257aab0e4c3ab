"""Every family's recipe distils its exact teacher (issue 4); a path registered outside the package does too."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from realuid.engine.runner import build, run
from realuid.errors import UserError

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ["vp", "ve", "edm", "si", "bridge"]  # fm: tests/test_spine.py
SHORT = ["DistillationTrainer.steps = {steps}", "DistillationTrainer.eval_every = {steps}",
         "DistillationTrainer.checkpoint_every = {steps}", "DistillationTrainer.eval_samples = 4000",
         "DistillationTrainer.batch_size = 256", "DistillationTrainer.warmup_steps = 50"]
SHIFTED_TEACHER = ["AnalyticTeacher.mixture = @teacher/GaussianMixture()",
                   "teacher/GaussianMixture.means = [[-1.0, 3.0], [7.0, 3.0], [3.0, 9.928203]]"]


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def _short(steps: int) -> list[str]:
    return [b.format(steps=steps) for b in SHORT]


def _metrics_now(trainer) -> dict:
    metrics = {}
    for metric in trainer.metrics:
        metrics.update(metric(trainer.sample(4000)))
    return metrics


def on_the_way(metrics: dict) -> bool:
    """The bar of a short run (300-500 steps): most samples on the true modes and SW well down (full runs: sw_rel < 0.08).

    Short runs have not settled the mode weights yet (a mode is often still
    missing at step 500; see the report of issue 4), so this bar checks
    positions; :func:`distilled` checks weights where a short run settles them.
    """
    return metrics["sw_rel"] < 0.6 and metrics["on_mode"] > 0.25


def distilled(metrics: dict) -> bool:
    """The full bar (as tests/test_spine.py's quality_ok, with a looser SW for a short run)."""
    return metrics["sw_rel"] < 0.15 and metrics["mode_weight_error"] < 0.05 and metrics["on_mode"] > 0.8


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_family_recipe_distils_its_exact_teacher(tmp_path, family):
    recipe = str(REPO / "gin" / f"uid_{family}_gmm.gin")
    trainer = run(recipe, _short(500), out=tmp_path / family, progress=False)
    final = trainer.log.rows()[-1]
    assert on_the_way(final), (family, final)
    # calibration: the same recipe's untrained generator fails the bar, by far
    fresh, _ = build(recipe, _short(500), out=tmp_path / f"{family}-fresh", progress=False)
    before = _metrics_now(fresh)
    assert not on_the_way(before), (family, before)
    assert final["sw_rel"] < 0.6 * before["sw_rel"], (family, final["sw_rel"], before["sw_rel"])


@pytest.mark.slow
def test_a_generator_distilled_from_a_wrong_teacher_fails_the_bar(tmp_path):
    """Calibration with a trained but wrong generator: the teacher knows a mixture shifted by (3, 3)."""
    trainer = run(str(REPO / "gin" / "uid_vp_gmm.gin"), _short(300) + SHIFTED_TEACHER, out=tmp_path / "vp",
                  progress=False)
    final = trainer.log.rows()[-1]
    assert not on_the_way(final), final


@pytest.mark.slow
def test_the_bridge_recipe_settles_the_mode_weights_of_its_bimodal_conditional(tmp_path):
    """Given x1 near y = 0 the clean point is either lower mode: a collapsed G(z, x1) loses a third of the mass."""
    trainer = run(str(REPO / "gin" / "uid_bridge_gmm.gin"), _short(450), out=tmp_path / "run", progress=False)
    final = trainer.log.rows()[-1]
    assert distilled(final), final
    # calibration: a bridge with too little noise (eps = 1) collapses the conditional in the same budget
    narrow = run(str(REPO / "gin" / "uid_bridge_gmm.gin"), _short(450) + ["BrownianBridge.eps = 1.0"],
                 out=tmp_path / "narrow", progress=False)
    assert not distilled(narrow.log.rows()[-1]), narrow.log.rows()[-1]


def test_a_bridge_recipe_without_a_paired_coupling_is_refused(tmp_path):
    with pytest.raises(UserError) as err:
        build(str(REPO / "gin" / "uid_bridge_gmm.gin"), ["DistillationTrainer.coupling = @IndependentGaussian()"],
              out=tmp_path / "run", progress=False)
    message = err.value.message
    assert "BrownianBridge needs a paired coupling" in message and "PairedDegradation" in message


def test_the_bridge_generator_sees_the_corrupted_end(tmp_path):
    trainer, _ = build(str(REPO / "gin" / "uid_bridge_gmm.gin"), _short(10), out=tmp_path / "run", progress=False)
    gen, _ = trainer.draw(with_grad=False)
    assert gen.cond is gen.x1 and gen.x1.shape == gen.x0.shape
    # the same z with two different conditions gives two different samples
    z = torch.randn(8, 2)
    with torch.no_grad():
        assert not torch.allclose(trainer.generator(z, torch.zeros(8, 2)), trainer.generator(z, torch.ones(8, 2)))


CUSTOM_PATH = '''
    """A matching path registered outside the package: x_t = (1 - t^2) x0 + t^2 x1."""
    from realuid.paths import AffinePath, Schedule
    from realuid.components import register


    @register("path")
    class OutsideQuadraticFlow(AffinePath):
        """Quadratic-time flow x_t = (1 - t^2) x0 + t^2 x1 (a user's path, for the registry test)."""

        def __init__(self, t_min: float = 1e-3, t_max: float = 1.0):
            super().__init__(t_min, t_max)

        def schedule(self, t):  # the schedule; velocity, x0, epsilon and score targets follow from it
            return Schedule(a=1 - t**2, da=-2 * t, b=t**2, db=2 * t)
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
    recipe.write_text(textwrap.dedent(CUSTOM_RECIPE.format(base=REPO / "gin" / "base" / "gmm_2d.gin")))
    monkeypatch.syspath_prepend(str(tmp_path))  # what `realuid run --import FILE.py` does for the file's folder
    trainer = run(str(recipe), _short(500), imports=[str(tmp_path / "realuid_outside_path.py")],
                  out=tmp_path / "run", progress=False)
    assert type(trainer.path).__name__ == "OutsideQuadraticFlow"
    assert "OutsideQuadraticFlow" in (tmp_path / "run" / "config.gin").read_text()
    final = trainer.log.rows()[-1]
    assert on_the_way(final), final

    from realuid.components import components
    assert "OutsideQuadraticFlow" in {c.name for c in components("path")}
