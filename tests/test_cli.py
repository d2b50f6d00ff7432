"""``basisnet <command>`` in-process: the README's demo, ``train --list-keys``, every bench subcommand's wiring and
the options of madds / sweep / evaluate / predict / export, each asserted on what it changes.

Where training or a benchmark is not the point, a fake stands in and records what the CLI handed it. The
evaluation options run on a copy of the shared tiny run whose cached exit logits are replaced by crafted ones
(below), so that every threshold criterion has one known answer.
"""

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
import torch
from PIL import Image

from basisnet.cli import main
from basisnet.evaluate import ExitLogits, budgeted_batch

# ------------------------------------------------------------------ crafted exit logits with known answers

# Exit 1 answers class 0 with confidence p (5 images per p, each p 0.005 from the sweep's 0.01 grid): right where
# p > 0.6, wrong below. Exit 2 is always right on val; on test it is wrong on the first TEST_WRONG images.
CONFIDENCES = [0.125 + 0.05 * k for k in range(18)]  # 0.125 ... 0.975
PER_P, CLASSES, TEST_WRONG = 5, 10, 9
N = PER_P * len(CONFIDENCES)  # 90
MADDS = [1.0, 3.0]  # exit_madds.json: millions per image at exit 1 and exit 2


def _crafted(wrong_last: int) -> ExitLogits:
    p = torch.tensor([c for c in CONFIDENCES for _ in range(PER_P)], dtype=torch.float64)
    targets = (p < 0.6).long()  # class 0 where exit 1 is right, class 1 where it is wrong
    first = torch.zeros(N, CLASSES, dtype=torch.float64)
    first[:, 0] = torch.log(p * (CLASSES - 1) / (1 - p))  # softmax max = p exactly
    last = torch.zeros(N, CLASSES, dtype=torch.float64)
    answer = targets.clone()
    answer[:wrong_last] = 2
    last[torch.arange(N), answer] = 10.0
    return ExitLogits(torch.stack([first, last]).float(), targets)


VAL, TEST = _crafted(0), _crafted(TEST_WRONG)


def _expected(threshold: float, wrong_last: int) -> tuple[float, float, float]:
    """Top-1 %, mean MAdds and exit-1 fraction at ``threshold``, counted by hand (not by the library)."""
    correct = leaving = 0
    for i in range(N):
        p = CONFIDENCES[i // PER_P]
        if p >= threshold:
            leaving += 1
            correct += p > 0.6
        else:
            correct += i >= wrong_last
    frac = leaving / N
    return 100 * correct / N, frac * MADDS[0] + (1 - frac) * MADDS[1], frac


def _write_crafted(run: Path) -> Path:
    """Crafted logits and MAdds caches in ``run`` (newer than its weights, so they are read as they are)."""
    VAL.save(run / "logits_val.pt")
    TEST.save(run / "logits_test.pt")
    (run / "exit_madds.json").write_text(json.dumps(MADDS))
    return run


@pytest.fixture
def crafted_run(shapes_run, tmp_path):
    return _write_crafted(Path(shutil.copytree(shapes_run, tmp_path / "run")))


def _table(out: str) -> list[list[float]]:
    return [[float(v) for v in line.split()] for line in out.splitlines() if re.fullmatch(r"[\d.\s]+", line.strip())]


# ------------------------------------------------------------------ basisnet demo


def test_demo_trains_from_the_shapes_config_with_the_overrides_and_prints_the_trade_off(
        monkeypatch, shapes_run, tmp_path, capsys):
    """The demo's training is faked (a copy of the tiny run with crafted logits): the point is what it trains
    (bundled shapes_demo + the command line's overrides), that it starts fresh, and the table it prints."""
    import basisnet.bench.demo as demo

    seen = {}

    def fake_train(cfg, out):
        seen["cfg"] = cfg
        shutil.copytree(shapes_run, out)
        _write_crafted(Path(out))

    monkeypatch.setattr(demo, "train_run", fake_train)
    out = tmp_path / "demo"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier demo")
    assert main(["demo", "--output", str(out), "train.epochs=3", "data.batch_size=16"]) == 0
    cfg = seen["cfg"]
    assert (cfg.model.name, cfg.data.source, cfg.train.optimizer) == ("basisnet", "shapes", "adamw")  # shapes_demo
    assert cfg.train.epochs == 3 and cfg.data.batch_size == 16  # the overrides reached the config
    assert not (out / "stale.txt").exists()  # a fresh run directory

    lines = capsys.readouterr().out.splitlines()
    start = lines.index(f"SHAPES test set ({N} images), BasisNet trained 3 epochs:")
    assert lines[start + 1].split() == ["top-1", "%", "MAdds", "(M)", "exit", "1", "%"]
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        name, values = line[:44].rstrip(), [float(v) for v in line[44:].split()]
        rows[name] = values
    light, full = 100 * 40 / N, 100 * (N - TEST_WRONG) / N
    assert rows["lightweight only (exit 1)"] == [round(light, 2), MADDS[0], 100.0]
    assert rows["specialist always (exit 2)"] == [round(full, 2), MADDS[1], 0.0]
    for t in (0.5, 0.7, 0.8, 0.9, 0.95, 0.99):
        top1, madds, frac = _expected(t, TEST_WRONG)
        assert rows[f"early exit, threshold {t:.2f}"] == [round(top1, 2), round(madds, 2), round(100 * frac, 1)]
    # max drop 0.5 pt on val: a threshold below 0.575 lets wrong exit-1 answers through; 0.58 is the cheapest
    top1, madds, frac = _expected(0.58, TEST_WRONG)
    assert rows["picked on val (max drop 0.5 pt): 0.58"] == [round(top1, 2), round(madds, 2), round(100 * frac, 1)]
    assert len(rows) == 2 + 6 + 1
    assert lines[-1] == f"plot: {out / 'sweep_val.png'}   sweep: {out / 'sweep_val.csv'}   run: {out}"
    assert (out / "sweep_val.png").stat().st_size > 0 and (out / "config.yaml").is_file()
    assert len((out / "sweep_val.csv").read_text().splitlines()) > 10


# ------------------------------------------------------------------ train --list-keys


def _listed(capsys) -> list[tuple[str, str, str]]:
    """``(key, value, help)`` per line of ``train --list-keys``: columns start where the first line's do."""
    lines = capsys.readouterr().out.splitlines()
    width = len(lines[0]) - len(lines[0][len(lines[0].split()[0]):].lstrip())
    return [(line[:width].strip(), line[width:width + 28].strip(), line[width + 28:]) for line in lines]


def test_train_list_keys_prints_every_config_key_then_the_models_options(capsys, tmp_path, monkeypatch):
    from basisnet.models import model_defaults, model_options
    from basisnet.train import config_help

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--list-keys"]) == 0
    rows = _listed(capsys)
    keys = config_help()
    assert len(keys) > 40
    assert [r[0] for r in rows[:len(keys)]] == [k for k, _, _ in keys]
    for (key, value, text), (_, default, help_text) in zip(rows, keys):
        assert value == str(default) and text == help_text
    by_key = {r[0]: r for r in rows}
    assert by_key["train.lr"][1] == "0.1" and by_key["data.source"][1] == "shapes"
    name = by_key["model.name"][1]
    options = [r for r in rows[len(keys):]]
    assert [r[0] for r in options] == [f"model.kwargs.{o}" for o in sorted(model_options(name))]
    assert by_key["model.kwargs.dropout"][1] == str(model_defaults(name)["dropout"])
    assert by_key["model.kwargs.num_classes"][1] == "(from the data)"
    # a bundled config's own values, and another model's options
    assert main(["train", "--config", "cifar10_basisnet", "--list-keys"]) == 0
    by_key = {r[0]: r for r in _listed(capsys)}
    assert by_key["model.kwargs.num_bases"][1:] == ("4", "basisnet option: set by this config")
    assert main(["train", "--list-keys", "model.name=msdnet"]) == 0
    listed = {r[0] for r in _listed(capsys)}
    assert {f"model.kwargs.{o}" for o in model_options("msdnet")} <= listed and "model.kwargs.num_bases" not in listed
    assert not list(tmp_path.iterdir())  # listing trains nothing and writes nothing


# ------------------------------------------------------------------ bench subcommands: wiring


@pytest.fixture
def in_tmp(monkeypatch, tmp_path):
    """Relative default paths (benchmarks/results/..., runs/...) land in tmp_path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    return tmp_path


def _fake_execute(monkeypatch, seen, records, **meta):
    """``study.execute`` replaced: keeps what the CLI planned, writes ``meta`` beside the results."""
    import basisnet.bench.study as study

    def fake(which, plan, out, results, command):
        seen.update(plan=plan, out=out, results=results, command=command)
        results.parent.mkdir(parents=True, exist_ok=True)
        results.with_name(results.stem + "_meta.json").write_text(json.dumps({"train_minutes": {"a": 1.5}, **meta}))
        return records

    monkeypatch.setattr(study, "execute", fake)


def test_bench_ablation_plans_candidates_subset_epochs_and_paths(monkeypatch, in_tmp, capsys):
    import basisnet.bench as bench

    seen = {}
    record = {"candidate": "scratch", "what": "w", "val_top1": [50.0, 60.0], "madds": [1.0, 7.0]}
    _fake_execute(monkeypatch, seen, [record])
    argv = ["bench", "ablation", "--candidates", "static", "scratch", "--subset", "500", "--epochs", "3",
            "--data", "cifar"]
    assert main(argv) == 0
    runs = seen["plan"].runs
    assert [r.name for r in runs] == ["static", "scratch"] and {(r.epochs, r.data) for r in runs} == {(3, "cifar")}
    assert all(r.overrides[0] == "data.subset=500" and r.overrides[1:] == bench.ABLATIONS[r.name].overrides
               for r in runs)
    assert (seen["out"], seen["results"]) == (Path("runs/bench_ablation_s500"), Path("benchmarks/results/ablation_s500.json"))
    assert seen["command"] == "basisnet " + " ".join(argv)
    assert capsys.readouterr().out.splitlines() == [*bench.format_ablation_table([record]).splitlines(),
                                                    "training: 1.5 min in all (a 1.5)"]
    assert main(["bench", "ablation"]) == 0  # defaults: every candidate, all images, 12 epochs
    runs = seen["plan"].runs
    assert [r.name for r in runs] == list(bench.ABLATIONS) and seen["plan"].facts == {"subset": 0}
    assert {(r.epochs, r.data) for r in runs} == {(12, "../shared/data/cifar10")}
    assert seen["out"] == Path("runs/bench_ablation")
    with pytest.raises(SystemExit):
        main(["bench", "ablation", "--quick"])
    assert "unrecognized arguments: --quick" in capsys.readouterr().err


def test_bench_accuracy_plans_quick_epochs_widths_and_warm_epochs(monkeypatch, in_tmp, capsys):
    seen = {}
    curve = {"range": [1.0, 2.0], "budgets": 2, "a_wins": 1, "ties": 0, "min_margin": -1.0, "max_margin": 2.0}
    targets = {"gain_over_control_pt": 1.25, "madds_ratio_to_control": 1.3, "early_exit_saving": 0.4,
               "early_exit_loss_pt": 0.1, "curve_vs_static_family": curve}
    _fake_execute(monkeypatch, seen, [{"model": "m", "top1": 70.0, "madds": 2.0, "params": 2e6, "threshold": None,
                                       "exit_fraction": None}], targets=targets)
    assert main(["bench", "accuracy", "--quick", "--epochs", "4", "--widths", "0.35", "0.5", "--warm-epochs", "2",
                 "--output", "o", "--results", "r/acc.json"]) == 0
    plan = seen["plan"]
    assert (seen["out"], seen["results"], plan.quick, plan.epochs) == (Path("o"), Path("r/acc.json"), True, 4)
    assert [(r.name, r.epochs, r.init_epochs) for r in plan.runs] == [
        ("static_w0.35", 4, None), ("static_w0.5", 4, None), ("static_w0.5_warm", 2, 4), ("basisnet_warm", 2, 4)]
    assert all("data.subset=4000" in r.overrides for r in plan.runs)  # --quick
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| m | 70.00 | 2.00 | 2.00M |  |  |"
    assert lines[3] == "BasisNet - control: +1.25 pt at 1.30x MAdds (target >= +1.5 pt at <= 1.35x)"
    assert lines[-1] == "training: 1.5 min in all (a 1.5)"
    assert main(["bench", "accuracy"]) == 0
    plan = seen["plan"]
    assert (plan.quick, plan.epochs, plan.facts["warm_epochs"]) == (False, 12, 6)
    assert [r.name for r in plan.runs][:3] == ["static_w0.35", "static_w0.5", "static_w0.75"]
    assert not any("data.subset=4000" in r.overrides for r in plan.runs)
    assert (seen["out"], seen["results"]) == (Path("runs/bench_cifar10"), Path("benchmarks/results/cifar10.json"))
    assert main(["bench", "accuracy", "--quick"]) == 0
    assert (seen["out"], seen["results"]) == (Path("runs/bench_cifar10_quick"),
                                              Path("benchmarks/results/cifar10_quick.json"))


def test_bench_compare_plans_subset_seeds_models_and_its_folders(monkeypatch, in_tmp, capsys):
    seen = {}
    _fake_execute(monkeypatch, seen, [], verdicts={}, seed_spread={}, targets={
        "gain_over_static_pt": 1.0, "madds_ratio_to_static": 1.2, "gain_over_condconv_pt": 0.5,
        "early_exit_saving": 0.3, "early_exit_loss_pt": 0.2, "early_exit_threshold": 0.8})
    assert main(["bench", "compare", "--quick", "--subset", "800", "--seeds", "2"]) == 0
    runs = seen["plan"].runs
    assert (seen["out"], seen["results"]) == (Path("runs/bench_cifar10_quick_n800"),
                                              Path("benchmarks/results/compare_quick_n800.json"))
    assert [r.name for r in runs] == ["basisnet", "basisnet_seed1", "static_w0.5", "static_w0.5_seed1", "condconv",
                                      "msdnet", "ranet"]
    assert all(r.epochs == 2 and r.overrides.index("data.subset=800") > r.overrides.index("data.subset=4000")
               for r in runs)  # --subset wins over --quick's
    (in_tmp / "benchmarks" / "results" / "compare.json").write_text(json.dumps(
        [{"model": label, "seed": 0} for label in ("MobileNetV3-Small x0.5 (static)", "CondConv-MobileNetV3-Small x0.5",
                                                   "MSDNet", "RANet")]))
    (in_tmp / "benchmarks" / "results" / "compare_meta.json").write_text(json.dumps(
        {"train_minutes": {"msdnet": 2.0}}))
    assert main(["bench", "compare", "--models", "basisnet"]) == 0
    kept = [r for r in seen["plan"].runs if not hasattr(r, "config")]
    assert [k.name for k in kept] == ["static_w0.5", "condconv", "msdnet", "ranet"]
    assert [k.minutes for k in kept] == [{}, {}, {"msdnet": 2.0}, {}]
    assert seen["plan"].facts["kept_from_earlier_run"] == ["condconv", "msdnet", "ranet", "static_w0.5"]


def test_bench_transfer_plans_its_sizes_from_the_options(monkeypatch, in_tmp, capsys):
    seen = {}
    _fake_execute(monkeypatch, seen, [{"model": "static, fine-tuned", "top1": 80.0, "madds": 5.0, "params": 1e6,
                                       "threshold": None, "exit_fraction": None}],
                  targets={"upcycled_minus_finetuned_pt": 1.5, "finetuned_minus_scratch_pt": 3.0,
                           "upcycled_minus_scratch_pt": 4.0})
    tree = in_tmp / "tree"
    for split, cls, n in (("train", "a", 400), ("train", "b", 400), ("train", "c", 12), ("train", "d", 12),
                          *(("test", cls, 1) for cls in "abcd")):  # --quick: 400 source images per class
        (tree / split / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8)).save(tree / split / cls / f"{i}.png")
    assert main(["bench", "transfer", "--quick", "--epochs", "3", "--source-epochs", "2", "--per-class", "7",
                 "--data", str(tree)]) == 0
    plan = seen["plan"]
    assert (seen["out"], seen["results"]) == (Path("runs/bench_transfer_quick"),
                                              Path("benchmarks/results/transfer_quick.json"))
    assert [(r.name, r.epochs) for r in plan.runs] == [
        ("source_static", 2), ("source_lightweight", 2), ("static_finetuned", 3), ("basisnet_upcycled", 3),
        ("static_scratch", 3), ("basisnet_scratch", 3)]
    assert (plan.facts["target_train_per_class"], plan.facts["target_val_per_class"]) == (7, 2)
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| static, fine-tuned | 80.00 | 5.00 | 1.00M |  |  |"
    assert lines[3] == "BasisNet upcycled - static fine-tuned: +1.50 pt (target >= +1 pt: met)"
    assert main(["bench", "transfer", "--data", str(tree), "--output", "t2"]) == 2  # 500 per class: too few here
    assert "has 12 images; the benchmark takes 550" in capsys.readouterr().err


def test_bench_deploy_without_a_run_measures_the_forms_with_its_plan(monkeypatch, in_tmp, capsys):
    import basisnet.bench.deploy_forms as forms

    seen = {}

    def fake(results, plan, command=""):
        seen.update(results=results, plan=plan, command=command)
        return ["records"]

    monkeypatch.setattr(forms, "run_forms_benchmark", fake)
    monkeypatch.setattr(forms, "deploy_targets", lambda records, variant: [
        {"met": variant.startswith("static"), "target": f"{records[0]} {variant}", "ratio": 1.234}])
    assert main(["bench", "deploy", "--quick", "--results", "d.json"]) == 0
    assert seen["plan"] == forms.DeployPlan.quick_plan() and seen["results"] == "d.json"
    assert capsys.readouterr().out.splitlines() == [f"{'MET   ' if v.startswith('static') else 'MISSED'} [{v}] "
                                                    f"records {v}: 1.23" for v in forms.DeployPlan.quick_plan().variants]
    assert main(["bench", "deploy"]) == 0
    assert seen["plan"] == forms.DeployPlan() and seen["results"] == "benchmarks/results/deploy_forms.json"


def test_bench_deploy_with_a_run_passes_run_static_run_and_data(monkeypatch, in_tmp, capsys):
    import basisnet.bench.deploy as deploy

    seen = {}

    def fake(run, data, results, static_run=None, command=""):
        seen.update(run=run, data=data, results=results, static_run=static_run, command=command)
        return {"out": 1}

    monkeypatch.setattr(deploy, "run_deploy_benchmark", fake)
    monkeypatch.setattr(deploy, "format_deploy_tables", lambda out: f"tables of {out}")
    assert main(["bench", "deploy", "--run", "runs/b", "--static-run", "runs/s", "--data", "cams"]) == 0
    assert seen == {"run": "runs/b", "data": "cams", "results": "benchmarks/results/deploy.json",
                    "static_run": "runs/s", "command": "basisnet bench deploy --run runs/b --static-run runs/s --data cams"}
    assert capsys.readouterr().out == "tables of {'out': 1}\n"
    with pytest.raises(SystemExit):  # a deploy option given to another bench
        main(["bench", "accuracy", "--static-run", "runs/s"])
    assert "unrecognized arguments: --static-run" in capsys.readouterr().err


def test_bench_loader_and_train_pass_their_plans_data_and_scratch(monkeypatch, in_tmp, capsys):
    import basisnet.bench.loader as loader
    import basisnet.bench.train_speed as train_speed

    seen = {}

    def fake(name):
        def run(data, results, plan, scratch, command):
            seen[name] = dict(data=data, results=results, plan=plan, scratch=scratch)
            return [name]
        return run

    monkeypatch.setattr(loader, "run_loader_benchmark", fake("loader"))
    monkeypatch.setattr(loader, "format_loader_table", lambda records: f"loader table {records}")
    monkeypatch.setattr(train_speed, "run_train_speed_benchmark", fake("train"))
    monkeypatch.setattr(train_speed, "format_train_speed_table", lambda records: f"train table {records}")
    assert main(["bench", "loader", "--quick", "--data", "c10", "--output", "scratch"]) == 0
    assert seen["loader"] == {"data": "c10", "results": "benchmarks/results/loader_quick.json",
                              "plan": loader.LoaderPlan.quick_plan(), "scratch": "scratch"}
    assert main(["bench", "loader"]) == 0
    assert seen["loader"]["plan"] == loader.LoaderPlan() and seen["loader"]["scratch"] == "runs/bench_loader"
    assert main(["bench", "train", "--quick", "--results", "t.json"]) == 0
    assert seen["train"] == {"data": "../shared/data/cifar10", "results": "t.json",
                             "plan": train_speed.TrainSpeedPlan.quick_plan(), "scratch": "runs/bench_train"}
    assert main(["bench", "train"]) == 0 and seen["train"]["plan"] == train_speed.TrainSpeedPlan()
    assert capsys.readouterr().out.splitlines() == ["loader table ['loader']"] * 2 + ["train table ['train']"] * 2
    with pytest.raises(SystemExit):
        main(["bench", "loader", "--epochs", "2"])
    assert "unrecognized arguments: --epochs" in capsys.readouterr().err


def test_bench_options_a_benchmark_would_ignore_are_errors(monkeypatch, in_tmp, capsys):
    """Options a benchmark has no use for are refused, not silently dropped (before anything runs): argparse
    refuses those it does not take, deploy those that apply only with or without --run."""
    import basisnet.bench.deploy as deploy
    import basisnet.bench.deploy_forms as forms
    import basisnet.bench.gpu_check as gpu_check
    import basisnet.bench.loader as loader
    import basisnet.bench.speed as speed
    import basisnet.bench.train_speed as train_speed

    def ran(*args, **kwargs):
        raise AssertionError("the benchmark ran")

    for module, name in ((speed, "run_speed_benchmark"), (deploy, "run_deploy_benchmark"),
                         (forms, "run_forms_benchmark"), (gpu_check, "run_gpu_check"),
                         (loader, "run_loader_benchmark"), (train_speed, "run_train_speed_benchmark")):
        monkeypatch.setattr(module, name, ran)
    for argv in (*(["bench", which, "--epochs", "3"] for which in ("train", "gpu", "deploy", "speed", "loader")),
                 ["bench", "deploy", "--output", "o"], ["bench", "gpu", "--quick"], ["bench", "speed", "--data", "d"]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        assert f"basisnet bench {argv[1]}: error: unrecognized arguments: {argv[2]}" in capsys.readouterr().err
    for argv, option in ((["--run", "r", "--quick"], "--quick"), (["--data", "d"], "--data"),
                         (["--static-run", "s"], "--static-run")):
        assert main(["bench", "deploy", *argv]) == 2
        assert option in capsys.readouterr().err


def test_bench_speed_passes_quick_devices_threads_and_prints_json(monkeypatch, in_tmp, capsys):
    import basisnet.bench.speed as bench

    seen = {}

    def fake(results, plan, devices=None, threads=None, command=""):
        seen.update(results=results, plan=plan, devices=devices, threads=threads)
        Path(results).with_name(Path(results).stem + "_meta.json").write_text(json.dumps({"ceilings": {}, "targets": []}))
        return [{"model": "a", "ms": 1.5}, {"model": "b", "ms": 2.5}]

    monkeypatch.setattr(bench, "run_speed_benchmark", fake)
    assert main(["bench", "speed", "--quick", "--device", "cpu", "--threads", "2", "--json"]) == 0
    assert seen == {"results": Path("benchmarks/results/speed_quick.json"), "plan": bench.SpeedPlan.quick_plan(),
                    "devices": ["cpu"], "threads": 2}
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [{"model": "a", "ms": 1.5},
                                                                                   {"model": "b", "ms": 2.5}]


def test_bench_gpu_passes_shapes_and_fails_when_the_check_failed(monkeypatch, in_tmp, capsys):
    import basisnet.bench.gpu_check as gpu_check

    seen, ok = {}, [True]

    def fake(results, data, scratch, command):
        seen.update(results=results, data=data, scratch=scratch)
        return {"ok": ok[0]}

    monkeypatch.setattr(gpu_check, "run_gpu_check", fake)
    monkeypatch.setattr(gpu_check, "format_gpu_check", lambda s: f"gpu {s['ok']}")
    assert main(["bench", "gpu"]) == 0
    assert seen == {"results": "benchmarks/results/gpu_check.json", "data": "shapes", "scratch": "runs/gpu_check"}
    ok[0] = False
    assert main(["bench", "gpu", "--data", "d", "--output", "s", "--results", "g.json"]) == 1
    assert seen == {"results": "g.json", "data": "d", "scratch": "s"}
    assert capsys.readouterr().out.splitlines() == ["gpu True", "gpu False"]


def test_every_bench_subcommand_has_a_wiring_test():
    from basisnet.bench.commands import bench_commands

    source = Path(__file__).read_text()
    names = {command.name for command in bench_commands()}
    tested = {"regime", "distill"}  # test_bench.py
    assert tested | {w for w in names if f'"bench", "{w}"' in source} == names


# ------------------------------------------------------------------ madds options


def _madds(capsys, *args):
    assert main(["madds", "--model", "mobilenetv3_small", "--width", "0.35", "--resolution", "32",
                 "--num-classes", "10", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line[:40].rstrip(): float(line[40:]) for line in lines[2:-1]}
    return lines, rows


def test_madds_bases_adds_the_synthesis_line_and_its_cost(capsys):
    lines, static = _madds(capsys)
    basis_lines, basis = _madds(capsys, "--bases", "4")
    assert lines[0] == "mobilenetv3_small  width 0.35  32x32  10 classes" and basis_lines[0] == lines[0] + "  N=4"
    assert "kernel synthesis (in the above)" not in static
    synthesis = basis["kernel synthesis (in the above)"]
    assert synthesis > 0
    # the network's convs cost what they cost statically; the synthesis comes on top of them
    assert basis["total"] == pytest.approx(static["total"] + synthesis, abs=2e-3)
    assert float(basis_lines[-1].split()[1][:-1]) > float(lines[-1].split()[1][:-1])  # params: N bases per conv
    _, basis8 = _madds(capsys, "--bases", "8")  # N reaches the model: more bases to mix, same convs
    assert basis8["kernel synthesis (in the above)"] > 1.5 * synthesis and basis8["stem"] == basis["stem"]


def test_madds_drop_strides_keeps_early_maps_large(capsys):
    _, plain = _madds(capsys)
    _, dropped = _madds(capsys, "--drop-strides", "2")
    # the stem's stride-2 step runs at stride 1 (4x its output pixels) and one later one: every block's maps
    # are at least 4x larger; the head's linear layers after the global pool cost the same
    assert dropped["stem"] == pytest.approx(4 * plain["stem"], rel=0.02)
    blocks = [name for name in plain if name.startswith("blocks.")]
    assert len(blocks) == 11 and all(dropped[b] >= 4 * plain[b] for b in blocks)
    assert dropped["head.0"] == plain["head.0"] and dropped["total"] > 4 * plain["total"]
    assert main(["madds", "--model", "mobilenetv3_small", "--drop-strides", "2", "--json"]) == 0  # 224 px
    assert json.loads(capsys.readouterr().out)["drop_strides"] == 2


def test_madds_depth_bounds_the_breakdown(capsys):
    _, depth1 = _madds(capsys, "--depth", "1")
    _, depth2 = _madds(capsys)
    _, depth3 = _madds(capsys, "--depth", "3")
    assert depth1 and all("." not in name for name in depth1 if name != "total")
    assert max(name.count(".") for name in depth2 if name != "total") == 1
    assert max(name.count(".") for name in depth3 if name != "total") == 2
    assert set(depth1) < set(depth2) < set(depth3) and "blocks.0.depthwise" in depth3
    assert depth1["total"] == depth2["total"] == depth3["total"]


# ------------------------------------------------------------------ sweep / evaluate options


def test_sweep_split_reads_and_writes_the_split_asked_for(crafted_run, capsys):
    assert main(["sweep", str(crafted_run), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"wrote {crafted_run / 'sweep_test.csv'} and .png"
    assert (crafted_run / "sweep_test.csv").is_file() and not (crafted_run / "sweep_val.csv").exists()
    rows = _table(out)
    assert rows[0] == [0.0, round(_expected(0.0, TEST_WRONG)[0], 2), 1.0, 100.0]
    assert rows[-1][:2] == [0.995, round(100 * (N - TEST_WRONG) / N, 2)]  # test's exit 2, not val's 100%
    assert main(["sweep", str(crafted_run)]) == 0  # default: val
    assert _table(capsys.readouterr().out)[-1][:2] == [0.995, 100.0]
    assert (crafted_run / "sweep_val.csv").is_file()


def test_evaluate_max_drop_picks_the_cheapest_threshold_within_the_drop(crafted_run, capsys):
    def picked(drop):
        assert main(["evaluate", str(crafted_run), "--max-drop", str(drop), "--json"]) == 0
        return json.loads(capsys.readouterr().out)["result"]

    strict, loose = picked(0), picked(6)
    # val: at 0.57 the 5 images at p=0.575 exit wrong (-5.6 pt), at 0.52 ten (-11.1 pt); sweep steps of 0.01
    assert strict["threshold"] == pytest.approx(0.58) and loose["threshold"] == pytest.approx(0.53)
    for result, t in ((strict, 0.58), (loose, 0.53)):
        top1, madds, frac = _expected(t, TEST_WRONG)
        assert (result["top1"], result["madds"], result["exit_fraction"]) == pytest.approx((top1, madds, frac))
    assert loose["madds"] < strict["madds"]
    for drop, t in ((0, 0.58), (6, 0.53)):  # the constraint as stated, on val where it is fitted
        assert _expected(t, 0)[0] >= 100.0 - drop and _expected(t - 0.01, 0)[0] < 100.0 - drop
    assert main(["evaluate", str(crafted_run), "--max-drop", "6"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        f"threshold 0.530: top-1 {_expected(0.53, TEST_WRONG)[0]:.2f}%, average "
        f"{_expected(0.53, TEST_WRONG)[1]:.3f}M MAdds, {100 * 0.5:.1f}% answered before the last exit")
    assert main(["evaluate", str(crafted_run), "--max-drop", "-1"]) == 2
    assert "--max-drop must be >= 0 percentage points" in capsys.readouterr().err


def test_evaluate_target_madds_stays_within_the_budget_and_refuses_one_below_exit_1(crafted_run, capsys):
    assert main(["evaluate", str(crafted_run), "--target-madds", "2.05", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    result = report["result"]
    # val: t=0.58 costs 2.11M (over), t=0.53..0.57 2.0M at 94.4% (the most accurate within), 0.52 1.89M at 88.9%
    assert result["threshold"] == pytest.approx(0.53)
    assert _expected(0.53, 0)[1] <= 2.05 < _expected(0.58, 0)[1]
    assert result["madds"] == pytest.approx(_expected(0.53, TEST_WRONG)[1]) and result["madds"] <= 2.05
    assert report["exit_madds"] == MADDS
    assert main(["evaluate", str(crafted_run), "--target-madds", "2.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["result"]["threshold"] == pytest.approx(0.58)  # 100% within 2.5M
    assert main(["evaluate", str(crafted_run), "--target-madds", "0.5"]) == 2
    assert "--target-madds 0.5 is below the minimum achievable average MAdds 1.0" in capsys.readouterr().err
    assert main(["evaluate", str(crafted_run), "--target-madds", "2", "--max-drop", "1"]) == 2
    assert "exactly one of" in capsys.readouterr().err


def test_evaluate_protocol_anytime_and_budgeted_report_their_protocol(crafted_run, capsys):
    assert main(["evaluate", str(crafted_run), "--protocol", "anytime"]) == 0
    lines = capsys.readouterr().out.splitlines()
    light, full = 100 * 40 / N, 100 * (N - TEST_WRONG) / N
    assert lines[0] == f"per exit (test): {light:.2f}% @ 1.00M, {full:.2f}% @ 3.00M"
    assert "top-1 %" in lines[1] and "MAdds (M)" in lines[1]  # a header with units
    assert [line.split() for line in lines[2:]] == [["1", f"{light:.2f}", "1.000"], ["2", f"{full:.2f}", "3.000"]]
    assert json.loads((crafted_run / "evaluation_anytime.json").read_text())["protocol"] == "anytime"
    assert main(["evaluate", str(crafted_run), "--protocol", "budgeted"]) == 0
    expected = budgeted_batch(VAL, TEST, MADDS)
    printed = capsys.readouterr().out.splitlines()
    assert "q" in printed[1] and "top-1 %" in printed[1] and "MAdds (M)" in printed[1]
    assert [float(line.split()[1]) for line in printed[2:]] == pytest.approx([r["top1"] for r in expected], abs=0.006)
    assert main(["evaluate", str(crafted_run), "--protocol", "budgeted", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["protocol"] == "budgeted" and len(report["result"]) == len(expected) > 1
    assert [(r["q"], r["top1"], r["madds"]) for r in report["result"]] == pytest.approx(
        [(r["q"], r["top1"], r["madds"]) for r in expected])
    assert main(["evaluate", str(crafted_run), "--protocol", "budgeted", "--temperature", "--json"]) == 0
    tempered = json.loads(capsys.readouterr().out)["result"]
    assert [r["top1"] for r in tempered] == pytest.approx(
        [r["top1"] for r in budgeted_batch(VAL, TEST, MADDS, temperature=True)])


# ------------------------------------------------------------------ predict stream options


@pytest.fixture
def frames(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"f{i}.png")
    return folder


def test_predict_stream_limit_prints_that_many_frames(shapes_run, frames, capsys):
    assert main(["predict", str(shapes_run), "--stream", str(frames), "--limit", "3", "--sequential",
                 "--runtime", "torch"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines[:-1]] == [str(frames / f"f{i}.png") for i in range(3)]
    assert lines[-1].startswith("3 frames in ") and "stages one after the other, PyTorch eager" in lines[-1]
    assert main(["predict", str(shapes_run), "--stream", str(frames), "--sequential", "--runtime", "torch",
                 "--summary"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("5 frames in ")


def test_predict_stream_stage_threads_reach_the_stream_predictor(shapes_run, frames, capsys):
    """A count per stage is checked by the predictor itself: three counts for two stages are refused."""
    assert main(["predict", str(shapes_run), "--stream", str(frames), "--stage-threads", "1", "1", "1",
                 "--sequential", "--runtime", "torch"]) == 2
    assert "stage_threads needs 2 counts >= 1, got [1, 1, 1]" in capsys.readouterr().err


def test_predict_stream_passes_workers_threads_limit_and_runtime(monkeypatch, tmp_path, capsys):
    """The options reach ``predict_stream`` as typed (``auto`` workers and the default runtime are resolved
    below: tests/test_stream.py); the CLI prints each row and the stream's own summary."""
    import time

    import basisnet.workflow as workflow

    seen = []

    def fake(run_dir, source, threshold, **kwargs):
        seen.append(dict(run_dir=run_dir, source=source, threshold=threshold, **kwargs))
        rows = ({"file": f"f{i}", "class": "circle", "confidence": 0.9, "exit": 1, "latency_ms": 2.0 + i}
                for i in range(2))
        return workflow.StreamRun(rows, "how it ran", source, time.perf_counter())

    monkeypatch.setattr(workflow, "predict_stream", fake)
    assert main(["predict", "run", "--stream", "dir", "--workers", "thread", "--stage-threads", "2", "1",
                 "--limit", "7", "--threshold", "0.6", "--runtime", "torch"]) == 0
    assert seen[-1] == {"run_dir": "run", "source": "dir", "threshold": 0.6, "parallel": True,
                        "stage_threads": [2, 1], "limit": 7, "workers": "thread", "runtime": "torch"}
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["f0\tcircle\t0.900\texit 1\t2.00 ms", "f1\tcircle\t0.900\texit 1\t3.00 ms"]
    assert lines[2].startswith("2 frames in ") and "latency mean 2.50 ms, p95 3.00 ms (how it ran)" in lines[2]
    assert main(["predict", "run", "--stream", "dir", "--sequential", "--summary", "--threshold", "0.6"]) == 0
    assert (seen[-1]["workers"], seen[-1]["parallel"], seen[-1]["runtime"]) == ("auto", False, None)
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(["predict", "run", "--stream", "dir", "img.png", "--threshold", "0.6"]) == 2
    assert "not both" in capsys.readouterr().err


def test_stream_summary_counts_what_was_answered():
    import time

    from basisnet.workflow import StreamRun

    stream = StreamRun(({"latency_ms": float(ms)} for ms in [5, 1, 20, *range(2, 20)]), "how", "src",
                       time.perf_counter())
    assert len(list(stream)) == 21
    assert stream.summary().startswith("21 frames in ") and "latency mean 10.24 ms, p95 19.00 ms (how)" in stream.summary()
    empty = StreamRun(iter([]), "how", "nowhere", time.perf_counter())
    assert list(empty) == []
    with pytest.raises(ValueError, match="no frames in nowhere"):
        empty.summary()


# ------------------------------------------------------------------ export --batch


def test_export_batch_reaches_the_exporter_and_a_bad_batch_is_an_error(monkeypatch, shapes_run, tmp_path, capsys):
    import basisnet.workflow as workflow

    real, seen = workflow.export_run, []

    def fake(run_dir, output, batch="dynamic"):
        seen.append(batch)
        return [{"path": "stage1.onnx", "inputs": ["images"], "outputs": ["logits", "state"]}]

    monkeypatch.setattr(workflow, "export_run", fake)
    assert main(["export", str(shapes_run), "--batch", "1", "--output", str(tmp_path / "b1")]) == 0
    assert main(["export", str(shapes_run), "--output", str(tmp_path / "dyn")]) == 0
    assert main(["export", str(shapes_run), "--batch", "8", "--output", str(tmp_path / "b8")]) == 0
    assert seen == ["1", "dynamic", "8"]
    assert capsys.readouterr().out.splitlines()[0] == f"stage 1: {tmp_path / 'b1' / 'stage1.onnx'}  images -> logits, state"
    monkeypatch.setattr(workflow, "export_run", real)  # the real exporter refuses a batch before tracing anything
    for bad in ("bad", "0", "-2"):
        assert main(["export", str(shapes_run), "--batch", bad, "--output", str(tmp_path / bad)]) == 2
        assert f"export batch must be a positive integer or 'dynamic', got '{bad}'" in capsys.readouterr().err
        assert not (tmp_path / bad / "stages.json").exists()


# ------------------------------------------------------------------ basisnet train: checks before any work


def test_train_dry_run_prints_the_config_and_needs_no_output(tmp_path, capsys, monkeypatch):
    """The README's `basisnet train --config cifar10_basisnet --dry-run`: a dry run writes nothing, so it needs
    no --output; a real run without one is refused, naming the option."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "cifar10_basisnet", "--dry-run", "train.epochs=7", "data.source=shapes"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# resolved: source_kind=shapes loader=memory classes=10 device=")
    resolved = yaml.safe_load(printed)  # the config.yaml the run would save: what the data decides filled in
    assert resolved["model"]["name"] == "basisnet" and resolved["train"]["epochs"] == 7
    assert resolved["model"]["kwargs"]["resolution"] == 32
    assert list(tmp_path.iterdir()) == []
    assert main(["train", "--config", "cifar10_basisnet"]) == 2
    assert "--output RUN_DIR is required" in capsys.readouterr().err


def test_a_model_option_typo_is_refused_before_any_data_is_read(tmp_path, capsys, monkeypatch):
    """`model.kwargs.num_base=8` names the key as typed and its likely meaning, at --dry-run and before a real run
    opens its data (the data source here does not exist: the model error must come first)."""
    import basisnet.workflow

    opened = []
    monkeypatch.setattr(basisnet.workflow, "open_inputs", lambda *a, **k: opened.append(1))
    for extra in (["--dry-run"], ["--output", str(tmp_path / "run")]):
        assert main(["train", "--config", "cifar10_basisnet", "model.kwargs.num_base=8", *extra]) == 2
        err = capsys.readouterr().err
        assert "model.kwargs.num_base: model 'basisnet' has no option 'num_base'" in err, err
        assert "did you mean 'model.kwargs.num_bases'?" in err
    assert opened == [] and not (tmp_path / "run").exists()


def test_data_errors_speak_the_command_line(tmp_path, capsys):
    """A missing data.source says it does not exist; an unreadable file is named with its path, what is wrong
    with it in words (not a Python object's repr), and the config key that skips it."""
    missing = tmp_path / "nowhere"
    assert main(["train", "--config", "cifar10_static", "--output", str(tmp_path / "r1"), f"data.source={missing}",
                 "data.loader=stream"]) == 2
    assert f"data source '{missing}' does not exist" in capsys.readouterr().err
    tree = tmp_path / "tree"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tree / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tree / split / cls / f"{i}.png")
    (tree / "train" / "a" / "notes.png").write_text("not an image")
    args = ["train", "--config", "cifar10_static", f"data.source={tree}", "data.val_size=2", "data.image_size=8",
            "model.kwargs.num_classes=2", "train.epochs=1"]
    assert main([*args, "--output", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert f"cannot read image {tree / 'train' / 'a' / 'notes.png'}: not an image file" in err, err
    assert "data.skip_bad=true" in err and "BytesIO" not in err and "skip_bad=True" not in err


def test_version_and_help_speak_to_a_user(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0 and capsys.readouterr().out.strip() == f"basisnet {version('basisnet')}"
    with pytest.raises(SystemExit):
        main(["-h"])
    shown = capsys.readouterr().out
    assert "Adaptive image classification" in shown and "``" not in shown  # not the module's docstring
