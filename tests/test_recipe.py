"""Regression test of BasisNet's default training recipe: no routing shortcut.

Trained from scratch with bases mixed from the first step (``train.static_phase=0``, the recipe before
the static phase), this tiny BasisNet's specialist read the class from its coefficients: fed their mean
it fell from 32.8% to 10.0% (seed 0) and from 34.6% to 16.0% (seed 1), drops of 22.8 and 18.6 points.
With the default recipe (static phase, then upcycling) it fell by 9.0 and 7.0 points and beat its
lightweight exit by 7.6 and 11.6 points.
"""

from basisnet.configs import bundled_config
from basisnet.train import load_config
from basisnet.workflow import shortcut_run, train_run

MAX_SHORTCUT_DROP = 12.0  # points the specialist may lose when every image gets the mean coefficients
MIN_GAIN_OVER_LIGHTWEIGHT = 3.0


def test_default_recipe_trains_a_specialist_that_reads_the_image(tmp_path):
    cfg = load_config(bundled_config("shapes_demo"), [
        "data.subset=2000", "data.val_size=500", "train.epochs=4", "model.kwargs.specialist_width=0.35"])
    assert cfg.train.static_phase > 0  # the default recipe, not an override
    train_run(cfg, tmp_path / "run", progress=False)
    report = shortcut_run(tmp_path / "run", "val")
    assert report.specialist >= report.lightweight + MIN_GAIN_OVER_LIGHTWEIGHT, report
    assert report.drop <= MAX_SHORTCUT_DROP, report
