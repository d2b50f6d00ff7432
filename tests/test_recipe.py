"""Regression test of BasisNet's default training recipe: no routing shortcut.

A tiny BasisNet (SHAPES, 2,000 images, 4 epochs) trained with its bases mixed from the first step
(``train.static_phase=0``, the recipe before the static phase) read the class from its coefficients:
fed their mean over the validation split its specialist kept 10.0 / 16.0 / 17.4% of 32.8 / 34.6 / 28.4%
(ratio 0.30 / 0.46 / 0.61; seed 0 on 1 thread, seed 1 on 1 thread, seed 0 on 2 threads: float sums in
another order change such a short run), and it trailed or barely beat its lightweight exit (+0.4 / +8.4 /
-0.6 pt). With the default recipe (static phase, then upcycling) it kept 30.2 / 32.6 / 29.6% of
39.2 / 39.6 / 41.0% (ratio 0.77 / 0.82 / 0.72) and beat the lightweight exit by 7.6 / 11.6 / 6.2 pt. Each
old run fails at least one of the two checks below, each new run passes both.
"""

import pytest

from basisnet.configs import bundled_config
from basisnet.train import load_config
from basisnet.workflow import shortcut_run, train_run

MIN_MEAN_COEFF_RATIO = 0.67  # the specialist with the mean coefficients keeps this share of its top-1
MIN_GAIN_OVER_LIGHTWEIGHT = 3.0  # points


@pytest.mark.slow
def test_default_recipe_trains_a_specialist_that_reads_the_image(tmp_path):
    cfg = load_config(bundled_config("shapes_demo"), [
        "data.subset=2000", "data.val_size=500", "train.epochs=4", "model.kwargs.specialist_width=0.35"])
    assert cfg.train.static_phase > 0  # the default recipe, not an override
    train_run(cfg, tmp_path / "run", progress=False)
    report = shortcut_run(tmp_path / "run", "val")
    assert report.specialist >= report.lightweight + MIN_GAIN_OVER_LIGHTWEIGHT, report
    assert report.specialist_mean_coeffs >= MIN_MEAN_COEFF_RATIO * report.specialist, report
