"""Every registered study's plan is well-formed, and every study is a ``bench`` subcommand with its own options.

Planning trains nothing, so this runs over ``list_studies()`` at the defaults and at ``--quick``: a new study
is checked by adding it. What its runs record is checked end to end on tiny data in test_bench.py and
test_transfer_bench.py (against the keys of the committed results).
"""

import argparse

import numpy as np
import pytest
from PIL import Image

from basisnet.bench import get_study, list_studies
from basisnet.bench.commands import bench_commands
from basisnet.bench.study import Run, resolve_options
from basisnet.cli import build_parser
from basisnet.configs import bundled_config, list_configs
from basisnet.train import load_config


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A 4-class ImageFolder tree large enough for transfer's split (500 + 50 target images per class)."""
    root = tmp_path_factory.mktemp("tree")
    for split, n in (("train", 550), ("test", 2)):
        for cls in ("a", "b", "c", "d"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def test_the_studies_are_registered():
    assert list_studies() == ["compare", "regime", "distill", "ablation", "accuracy", "transfer"]
    with pytest.raises(ValueError, match="unknown study"):
        get_study("nope")


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("name", list_studies())
def test_every_study_plans_uniquely_named_runs_of_bundled_configs_that_load(name, quick, tree, tmp_path):
    study = get_study(name)
    options = {"output": tmp_path / "runs", "results": tmp_path / "r.json", "data": tree}
    if any(o.dest == "quick" for o in study.options):
        options["quick"] = quick
    elif quick:
        pytest.skip(f"{name} has no --quick")
    opts = resolve_options(study, options)
    plan = study.plan(opts, opts.output)
    runs = [r for r in plan.runs if isinstance(r, Run)]
    assert runs and len({r.name for r in runs}) == len(runs)  # one directory per run
    assert plan.epochs >= 1 and plan.quick == bool(getattr(opts, "quick", False))
    for run in runs:
        assert run.config in list_configs()
        cfg = load_config(bundled_config(run.config), run.config_overrides)  # every override parses
        assert cfg.train.epochs == run.epochs and str(cfg.data.source) == str(run.data)
        assert run.evaluate is not None or any(run.name in o for r in runs for o in r.overrides)  # trained for another
        assert run.evaluate is None or callable(run.evaluate)


def test_an_unknown_option_of_a_study_is_refused():
    with pytest.raises(TypeError, match="takes no option \\['seeds'\\]"):
        resolve_options(get_study("accuracy"), {"seeds": 2})


def test_each_bench_subcommand_parses_exactly_its_own_options():
    parser = build_parser()
    bench = next(a for a in parser._subparsers._group_actions[0].choices["bench"]._actions
                 if isinstance(a, argparse._SubParsersAction))
    commands = {c.name: c for c in bench_commands()}
    assert list(bench.choices) == list(commands)
    for name, command in commands.items():
        taken = {a.dest for a in bench.choices[name]._actions} - {"help"}
        assert taken == {o.dest for o in command.options if o.cli}, name
    for name in list_studies():
        assert {o.dest for o in commands[name].options} == {o.dest for o in get_study(name).all_options}
