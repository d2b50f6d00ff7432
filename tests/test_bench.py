"""Both CIFAR-10 benchmarks end to end on a tiny CIFAR-shaped tree, plus the curve comparison they report."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from basisnet.bench import (PEERS, format_compare_table, format_compare_targets, format_distill_table,
                            format_records_table, format_regime_table, format_seed_table, format_targets,
                            format_train_minutes, format_verdicts, run_study)
from basisnet.bench.compare import BUDGETS, seed_spread, targets
from basisnet.configs import bundled_config
from basisnet.bench.runs import train_minutes
from helpers import committed_record_keys
from basisnet.evaluate import best_within, compare_curves, count_params, exit_accuracy, threshold_sweep
from basisnet.workflow import exit_logits, load_run, run_exit_madds
from basisnet.train import load_config

TINY = ["model.kwargs.num_classes=3", "data.subset=30", "data.val_size=12", "data.batch_size=10", "data.eval_batch_size=32",
        "train.warmup_epochs=0", "train.log_interval=1"]


@pytest.fixture(scope="module")
def cifar_tree(tmp_path_factory):
    """3 classes of 32x32 images told apart by colour: train 14 each, test 4 each."""
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    for split, n in (("train", 14), ("test", 4)):
        for c, cls in enumerate(("red", "green", "blue")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
                img[..., c] += 150
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


def test_best_within_and_compare_curves():
    a = [(1.0, 50.0), (2.0, 60.0), (3.0, 58.0), (4.0, 70.0)]
    b = [(1.5, 55.0), (3.5, 65.0), (9.0, 90.0)]
    assert best_within(a, 0.5) is None
    assert best_within(a, 3.0) == 60.0  # the dip at 3.0 is never chosen
    v = compare_curves(a, b)
    assert v["range"] == [1.5, 9.0]
    # budgets 1.5, 2, 3, 3.5, 4, 9: a = 50, 60, 60, 60, 70, 70; b = 55, 55, 55, 65, 65, 90
    assert v["budgets"] == 6 and v["a_wins"] == 3 and v["ties"] == 0
    assert v["min_margin"] == -20.0 and v["max_margin"] == 5.0
    single = compare_curves([(1.0, 1.0)], [(2.0, 2.0)])  # one point each: compared from the dearer one up
    assert single["budgets"] == 1 and single["min_margin"] == -1.0
    with pytest.raises(ValueError):
        compare_curves([], b)


def test_accuracy_benchmark_warm_starts_basisnet_and_trains_the_control(cifar_tree, tmp_path):
    out, results = tmp_path / "runs", tmp_path / "results" / "cifar10.json"
    records = run_study("accuracy", data=cifar_tree, output=out, results=results, quick=True, epochs=1, warm_epochs=1,
                        overrides=TINY)
    assert set().union(*records) == committed_record_keys("cifar10")  # the schema of the committed results
    names = [r["model"] for r in records]
    assert any("w0.35" in n for n in names) and any("1 + 1 epochs as BasisNet" in n for n in names)
    basis = [r for r in records if r["model"].startswith("basisnet")]
    assert len(basis) == 3 and all(r["epochs"] == 2 and r["init_epochs"] == 1 for r in basis)
    control = next(r for r in records if "as BasisNet" in r["model"])
    assert control["epochs"] == 2 and control["init_epochs"] == 1
    assert json.loads((out / "static_w0.5_warm" / "init.json").read_text())["model"]["epochs"] == 1
    init = json.loads((out / "basisnet_warm" / "init.json").read_text())
    assert init["specialist"]["epochs"] == 1 and init["specialist"]["source"].endswith("static_w0.5")
    assert json.loads(results.read_text()) == records and results.with_suffix(".png").stat().st_size > 0
    meta = json.loads(results.with_name("cifar10_meta.json").read_text())
    full = next(r for r in records if r["model"] == "basisnet (no early exit)")
    # the records are the runs' test numbers, and the table shows them
    basis_top1 = exit_accuracy(exit_logits(out / "basisnet_warm", "test"))
    assert (full["top1"], full["madds"]) == (round(basis_top1[1], 2), round(run_exit_madds(out / "basisnet_warm")[1], 3))
    assert f"| basisnet (no early exit) | {full['top1']:.2f} | {full['madds']:.2f} | {full['params'] / 1e6:.2f}M |  |  |" \
        in format_records_table(records).splitlines()
    assert meta["targets"]["gain_over_control_pt"] == round(full["top1"] - control["top1"], 2)
    early = next(r for r in records if r["threshold"] is not None)
    assert meta["targets"]["early_exit_saving"] == pytest.approx(1 - early["madds"] / full["madds"], abs=1e-3)
    assert meta["targets"]["early_exit_loss_pt"] == pytest.approx(full["top1"] - early["top1"], abs=0.011)
    static = {r["model"]: r for r in records if r["model"].startswith("mobilenetv3")}
    # the sweep of BasisNet's thresholds on test against the static family's points (x0.35, x0.5; not the control)
    family = sorted((run_exit_madds(out / f"static_w{w}")[-1], exit_accuracy(exit_logits(out / f"static_w{w}", "test"))[-1])
                    for w in (0.35, 0.5))
    sweep = [(r["madds"], r["top1"]) for r in threshold_sweep(exit_logits(out / "basisnet_warm", "test"),
                                                               run_exit_madds(out / "basisnet_warm"))]
    assert meta["targets"]["curve_vs_static_family"] == json.loads(json.dumps(compare_curves(sweep, family)))
    lines = format_targets(meta).splitlines()
    assert lines[0].startswith(f"BasisNet - control: {meta['targets']['gain_over_control_pt']:+.2f} pt")
    assert f"saves {100 * meta['targets']['early_exit_saving']:.1f}%" in lines[1]
    assert len(static) == 3  # x0.35, x0.5 and the control
    with pytest.raises(ValueError, match="must include"):
        run_study("accuracy", data=cifar_tree, output=out, results=results, quick=True, widths=[0.75])
    with pytest.raises(ValueError, match="holds a run with another config .*train.epochs: 1 -> 3"):
        run_study("accuracy", data=cifar_tree, output=out, results=results, quick=True, epochs=3, overrides=TINY)


@pytest.fixture
def tiny_peers(monkeypatch, tmp_path):
    """Every peer's bundled config with tiny model kwargs (``helpers.TINY``; recipe and training keys kept): what
    the benchmarks book-keep (records, reuse, verdicts) does not depend on the models' size."""
    import yaml

    import basisnet.bench.runs as runs
    from helpers import TINY as TINY_MODELS

    folder = tmp_path / "configs"
    folder.mkdir()
    for peer in PEERS:
        cfg = yaml.safe_load(bundled_config(peer.config).read_text())
        cfg["model"]["kwargs"] = dict(TINY_MODELS[cfg["model"]["name"]])
        (folder / f"{peer.config}.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(runs, "bundled_config", lambda name: folder / f"{name}.yaml" if (folder / f"{name}.yaml").is_file()
                        else bundled_config(name))
    return folder


def _trained(out: str) -> list[str]:
    """The runs train_or_reuse trained (not reused), from what it printed."""
    return re.findall(r"^\[bench\] training (\S+) ", out, flags=re.M)


def _saved(out):
    """Modification times of every run's weights and state: a reused run keeps them."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for pattern in ("*/best.safetensors", "*/last.state.pt")
            for p in out.glob(pattern)}


def _budgeted(records, label):
    return [(r["madds"], r["top1"]) for r in records if r["model"] == label and r["protocol"] == "budgeted-batch"]


def test_compare_benchmark_records_both_protocols_for_every_peer(cifar_tree, tmp_path, tiny_peers, capsys):
    out, results = tmp_path / "runs", tmp_path / "compare.json"
    records = run_study("compare", data=cifar_tree, output=out, results=results, quick=True, epochs=1, overrides=TINY)
    assert _trained(capsys.readouterr().out) == [peer.run for peer in PEERS]
    assert set().union(*records) == committed_record_keys("compare_n10000")
    verdicts = json.loads(results.with_name("compare_meta.json").read_text())["verdicts"]
    for peer in PEERS:
        rows = [r for r in records if r["model"] == peer.label]
        anytime = [r for r in rows if r["protocol"] == "anytime"]
        budgeted = [r for r in rows if r["protocol"] == "budgeted-batch"]
        # anytime: one record per exit of the trained model, its test top-1 and MAdds
        model = load_run(out / peer.run)[0]
        top1, madds = exit_accuracy(exit_logits(out / peer.run, "test")), run_exit_madds(out / peer.run)
        assert [(r["exit"], r["top1"], r["madds"]) for r in anytime] == \
            [(k + 1, round(t, 2), round(m, 3)) for k, (t, m) in enumerate(zip(top1, madds))]
        assert len(anytime) == getattr(model, "num_exits", 1) and all(r["params"] == count_params(model) for r in rows)
        assert budgeted and all(abs(sum(r["exit_fraction"]) - 1) < 1e-3 for r in budgeted)
        assert all(len(r["threshold"]) == len(anytime) and r["threshold"][-1] == 0.0 for r in budgeted)
        # each budgeted row's MAdds are its exit fractions weighted by the exits' MAdds
        assert all(r["madds"] == pytest.approx(sum(f * m for f, m in zip(r["exit_fraction"], madds)), abs=2e-3)
                   for r in budgeted)
    assert len([r for r in records if r["model"] == "RANet" and r["protocol"] == "anytime"]) == 4  # tiny RANet
    basisnet = "BasisNet"
    assert PEERS[0].label == basisnet  # the table and the plot lead with it
    rows = [r for r in records if r["model"] == basisnet]
    early = next(r for r in rows if r["protocol"] == "early-exit")
    # the verdicts are the budgeted curves compared, RANet against MSDNet and BasisNet against every other peer
    expected = {"RANet vs MSDNet": compare_curves(_budgeted(records, "RANet"), _budgeted(records, "MSDNet"))}
    expected |= {f"{basisnet} vs {p.label}": compare_curves(_budgeted(records, basisnet), _budgeted(records, p.label))
                 for p in PEERS if p.label != basisnet}
    assert verdicts == json.loads(json.dumps(expected))
    meta = json.loads(results.with_name("compare_meta.json").read_text())
    assert results.with_suffix(".png").stat().st_size > 0
    assert meta["train_minutes"] == {peer.run: train_minutes(out / peer.run) for peer in PEERS}
    full = rows[1]["top1"]
    static = next(r for r in records if r["model"] == PEERS[1].label and r["protocol"] == "anytime")["top1"]
    assert meta["targets"]["gain_over_static_pt"] == round(full - static, 2)
    assert meta["targets"]["early_exit_loss_pt"] == round(full - early["top1"], 2)
    assert meta["shortcut_val"]["specialist"] == pytest.approx(exit_accuracy(exit_logits(out / "basisnet", "val"))[1],
                                                               abs=0.01)
    assert format_compare_targets(meta).startswith(f"BasisNet - static backbone: {meta['targets']['gain_over_static_pt']:+.2f} pt")
    lines = format_verdicts(verdicts).splitlines()
    v = verdicts["RANet vs MSDNet"]
    assert len(lines) == len(verdicts) and lines[0] == (
        f"RANet vs MSDNet: RANet better at {v['a_wins']}/{v['budgets']} budgets in {v['range'][0]:.2f}-"
        f"{v['range'][1]:.2f}M MAdds (margin {v['min_margin']:+.2f} to {v['max_margin']:+.2f} pt)")
    table = format_compare_table(records).splitlines()
    anytime = [r for r in rows if r["protocol"] == "anytime"]
    assert len(table) == len(PEERS) + 2 and table[2].startswith(
        f"| BasisNet | {rows[0]['params'] / 1e6:.2f}M | 2 | "
        + ", ".join(f"{r['top1']:.1f}@{r['madds']:.1f}" for r in anytime) + " | ")
    cells = [c.strip() for c in table[2].split("|")[5:-1]]  # best budgeted top-1 within each budget
    assert cells == ["-" if (b := best_within(_budgeted(records, basisnet), budget)) is None else f"{b:.2f}"
                     for budget in BUDGETS]
    saved = _saved(out)

    # --models: re-run BasisNet alone (reused, re-evaluated), keep every other peer's records and minutes as they were
    again = run_study("compare", data=cifar_tree, output=out, results=results, quick=True, epochs=1, overrides=TINY,
                      models=["basisnet"])
    assert _trained(capsys.readouterr().out) == [] and _saved(out) == saved
    assert [r for r in again if r["model"] != basisnet] == [r for r in records if r["model"] != basisnet]
    assert [r for r in again if r["model"] == basisnet] == rows
    meta2 = json.loads(results.with_name("compare_meta.json").read_text())
    assert meta2["kept_from_earlier_run"] == sorted(p.run for p in PEERS[1:])
    assert meta2["train_minutes"] == meta["train_minutes"] and meta2["shortcut_val"] == meta["shortcut_val"]
    with pytest.raises(ValueError, match="unknown --models"):
        run_study("compare", data=cifar_tree, output=out, results=results, quick=True, epochs=1, overrides=TINY,
                  models=["resnet"])

    # The regime study reuses compare's runs at their length (1) and trains the peers it names at the others;
    # CondConv, left out, is read where a run of that length exists.
    regime = run_study("regime", data=cifar_tree, output=out, results=tmp_path / "regime.json", lengths=[1, 2],
                       quick=True, overrides=TINY, models=["basisnet", "static_w0.5"])
    assert set().union(*regime) == committed_record_keys("regime_n10000")
    assert _trained(capsys.readouterr().out) == ["basisnet_e2", "static_w0.5_e2"] and _saved(out).items() >= saved.items()
    assert not (out / "condconv_e2").exists() and not (out / "basisnet_e1").exists()
    gains = json.loads((tmp_path / "regime_meta.json").read_text())["gains"]
    assert [g["epochs"] for g in gains] == [1, 2]
    last = {(r["model"], r["epochs"]): r["top1"] for r in regime if r["exit"] == r["num_exits"]}
    condconv = next(r for r in records if r["model"] == PEERS[2].label and r["protocol"] == "anytime")["top1"]
    assert last[basisnet, 1] == full and last[PEERS[1].label, 1] == static and last[PEERS[2].label, 1] == condconv
    one_seed = {"seeds": {basisnet: 1, PEERS[1].label: 1}, "worst_minus_best_static_pt": None}
    assert gains[0] == {"epochs": 1, "gain_over_static_pt": round(full - static, 2),
                        "gain_over_condconv_pt": round(full - condconv, 2), **one_seed}
    assert gains[1] == {"epochs": 2, "gain_over_static_pt": round(last[basisnet, 2] - last[PEERS[1].label, 2], 2),
                        "gain_over_condconv_pt": None, **one_seed}
    assert format_regime_table(regime).splitlines()[3] == (
        f"| 2 | 1 / 1 | {last[basisnet, 2]:.2f} | {last[PEERS[1].label, 2]:.2f} | - | "
        f"{gains[1]['gain_over_static_pt']:+.2f} | - | - |") and (tmp_path / "regime.png").stat().st_size > 0
    saved = _saved(out)
    regime = run_study("regime", data=cifar_tree, output=out, results=tmp_path / "regime.json", lengths=[1, 2],
                       quick=True, overrides=TINY)  # every studied peer: only CondConv is missing at 2 epochs
    assert _trained(capsys.readouterr().out) == ["condconv_e2"] and _saved(out).items() >= saved.items()
    gains = json.loads((tmp_path / "regime_meta.json").read_text())["gains"]
    assert gains[1]["gain_over_condconv_pt"] is not None
    with pytest.raises(ValueError, match="must name BasisNet and its static backbone"):
        run_study("regime", data=cifar_tree, output=out, results=tmp_path / "regime.json", lengths=[1], quick=True,
                  overrides=TINY, models=["condconv"])

    # Self-distillation: the bundled setting is compare's run (reused), the other trains beside it.
    saved = _saved(out)
    distill = run_study("distill", data=cifar_tree, output=out, results=tmp_path / "distill.json", quick=True, epochs=1,
                        overrides=TINY)
    assert set().union(*distill) == committed_record_keys("distill_n10000")
    assert _trained(capsys.readouterr().out) == ["basisnet_sd0.5", "msdnet_sd0.5", "ranet_sd0.5"]
    assert _saved(out).items() >= saved.items()
    for peer in PEERS:  # the other setting than the bundled config's trains beside compare's run
        bundled = load_config(bundled_config(peer.config)).train.self_distill
        assert (out / f"{peer.run}_sd{0 if bundled else 0.5:g}").is_dir() == (peer.label in ("BasisNet", "MSDNet", "RANet"))
    assert {r["model"] for r in distill} == {"BasisNet, self-distill 0.5", "BasisNet, no self-distill",
                                            "MSDNet, self-distill 0.5", "MSDNet, no self-distill",
                                            "RANet, self-distill 0.5", "RANet, no self-distill"}
    for label in ("BasisNet", "MSDNet", "RANet"):  # "no self-distill" is compare's run: the same numbers
        assert [(r["protocol"], r["top1"], r["madds"]) for r in distill if r["model"] == f"{label}, no self-distill"] \
            == [(r["protocol"], r["top1"], r["madds"]) for r in records if r["model"] == label
                and r["protocol"] != "early-exit"]
    rows = json.loads((tmp_path / "distill_meta.json").read_text())["budgets"]
    assert {r["model"] for r in rows} == {"BasisNet", "MSDNet", "RANet"} and len(rows) == 2 + 3 + 3
    for row in rows:  # the best top-1 within each budget, with and without
        on = [(r["madds"], r["top1"]) for r in distill if r["model"] == f"{row['model']}, self-distill 0.5"]
        off = [(r["madds"], r["top1"]) for r in distill if r["model"] == f"{row['model']}, no self-distill"]
        assert (row["top1_on"], row["top1_off"]) == (best_within(on, row["budget"]), best_within(off, row["budget"]))
        assert row["change_pt"] == round(row["top1_on"] - row["top1_off"], 2)
    assert format_distill_table(distill).splitlines()[2] == (
        f"| BasisNet | 0.5 | {rows[0]['budget']:.2f} | {rows[0]['top1_on']:.2f} | {rows[0]['top1_off']:.2f} | "
        f"{rows[0]['change_pt']:+.2f} |")
    saved = _saved(out)
    only = run_study("distill", data=cifar_tree, output=out, results=tmp_path / "distill.json", quick=True, epochs=1,
                     overrides=TINY, models=["ranet"])
    assert {r["base_model"] for r in only} == {"RANet"} and _trained(capsys.readouterr().out) == []
    assert _saved(out) == saved
    with pytest.raises(ValueError, match="unknown --models"):
        run_study("distill", data=cifar_tree, output=out, results=tmp_path / "distill.json", quick=True, epochs=1,
                  models=["condconv"])


def test_compare_reports_the_spread_of_seeds_and_the_targets(tmp_path):
    """Targets from records alone: means over seeds, worst BasisNet seed against the best static seed."""
    def anytime(model, top1, madds, seed, exit=1, exits=1):
        return {"model": model, "protocol": "anytime", "top1": top1, "madds": madds, "seed": seed, "exit": exit,
                "num_exits": exits}

    records = []
    for seed, (light, full, static) in enumerate([(70.0, 84.0, 81.0), (71.0, 85.0, 82.5), (72.0, 83.0, 81.5)]):
        records += [anytime("BasisNet", light, 1.0, seed, 1, 2), anytime("BasisNet", full, 7.0, seed, 2, 2),
                    anytime(PEERS[1].label, static, 5.5, seed),
                    {"model": "BasisNet", "protocol": "early-exit", "top1": full - 0.2, "madds": 4.9, "seed": seed,
                     "threshold": 0.8}]
    records += [anytime(PEERS[2].label, 83.5, 7.5, 0),
                *({"model": "BasisNet", "protocol": "budgeted-batch", "top1": t, "madds": m, "seed": 0}
                  for m, t in [(2.0, 75.0), (4.0, 81.7), (7.5, 83.9)])]
    spread = seed_spread(records)
    assert spread["BasisNet"][1] == {"exit": 2, "madds": 7.0, "top1": [84.0, 85.0, 83.0], "mean": 84.0, "min": 83.0,
                                     "max": 85.0}
    t = targets(records)
    assert t["gain_over_static_pt"] == round(84.0 - 81.67, 2) and t["worst_minus_best_static_pt"] == 0.5
    assert t["early_exit_saving"] == 0.3 and t["early_exit_loss_pt"] == 0.2 and t["lightweight_top1"] == 71.0
    assert t["curve_reaches_static_at_madds_ratio"] == round(4.0 / 5.5, 3) and t["curve_minus_condconv_pt"] == 0.4
    table = format_seed_table(spread)
    assert "| BasisNet | 2 | 7.00 | 84.00, 85.00, 83.00 | 84.00 | 83.00-85.00 |" in table
    assert PEERS[2].label not in table  # one seed: no spread to show


def test_config_diff_counts_a_key_the_saved_config_lacks_as_its_default():
    from basisnet.train import config_diff, config_to_dict, load_config

    current = config_to_dict(load_config(None))
    saved = config_to_dict(load_config(None))
    del saved["train"]["init_from"], saved["train"]["init_noise"]  # a run saved before these keys existed
    assert config_diff(saved, current) == []
    saved["train"]["lr"] = 0.5
    assert config_diff(saved, current) == ["train.lr: 0.5 -> 0.1"]


def test_training_minutes_come_from_each_runs_epoch_log(tmp_path):
    assert train_minutes(tmp_path) == 0.0  # no epoch finished yet
    (tmp_path / "summary.csv").write_text("epoch,lr,seconds,images_per_s\n1,0.1,90.0,500\n2,0.05,30.0,1500\n")
    assert train_minutes(tmp_path) == 2.0
    assert format_train_minutes({"a": 1.2, "b": 0.5}) == "training: 1.7 min in all (a 1.2, b 0.5)"


def _fake_execute(monkeypatch, seen, records, **meta):
    """``study.execute`` replaced: records what the CLI planned, writes ``meta`` and returns ``records``."""
    import basisnet.bench.study as study

    def fake(which, plan, out, results, command):
        seen.update(study=which.name, plan=plan, out=out, results=results, command=command)
        results.parent.mkdir(parents=True, exist_ok=True)
        results.with_name(results.stem + "_meta.json").write_text(json.dumps(meta))
        return records

    monkeypatch.setattr(study, "execute", fake)


def test_cli_bench_prints_table_verdicts_and_training_time(monkeypatch, tmp_path, capsys):
    from basisnet.cli import main

    record = {"model": "RANet", "top1": 70.0, "madds": 3.5, "params": 1000, "protocol": "anytime"}
    found = {"RANet vs MSDNet": {"range": [4.0, 9.0], "budgets": 3, "a_wins": 1, "ties": 0, "min_margin": -1.0,
                                 "max_margin": 0.5}}
    seen = {}
    _fake_execute(monkeypatch, seen, [record], verdicts=found, train_minutes={"msdnet": 31.2, "ranet": 25.8},
                  targets={"gain_over_static_pt": 1.6, "madds_ratio_to_static": 1.24, "gain_over_condconv_pt": 0.5,
                           "early_exit_saving": 0.31, "early_exit_loss_pt": 0.2, "early_exit_threshold": 0.8})
    assert main(["bench", "compare", "--results", str(tmp_path / "c.json")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[2].startswith("| RANet | 0.00M | 1 | 70.0@3.5 |")
    assert lines[-5] == format_verdicts(found) and lines[-1] == "training: 57.0 min in all (msdnet 31.2, ranet 25.8)"
    assert lines[-4] == "BasisNet - static backbone: +1.60 pt at 1.24x MAdds (target >= +1.5 pt at <= 1.35x)"
    assert seen["results"] == tmp_path / "c.json" and seen["command"] == f"basisnet bench compare --results {tmp_path / 'c.json'}"


def test_ablation_trains_named_candidates_and_reports_the_shortcut(cifar_tree, tmp_path):
    from basisnet.bench import ABLATIONS, format_ablation_table

    results = tmp_path / "ablation.json"
    records = run_study("ablation", candidates=["static", "scratch"], data=cifar_tree, output=tmp_path / "runs",
                        results=results, epochs=1, command="test", overrides=TINY)
    assert set().union(*records) == committed_record_keys("ablation")
    assert [r["candidate"] for r in records] == ["static", "scratch"] and json.loads(results.read_text()) == records
    static, scratch = records
    assert len(static["val_top1"]) == 1 and "shortcut" not in static
    assert len(scratch["val_top1"]) == 2 and scratch["shortcut"]["specialist"] == pytest.approx(scratch["val_top1"][1], abs=0.02)
    assert "train.static_phase=0.0" in ABLATIONS["scratch"].overrides
    # the records are the runs' validation numbers, and the table's rows show them
    assert scratch["val_top1"] == [round(a, 2) for a in exit_accuracy(exit_logits(tmp_path / "runs" / "scratch", "val"))]
    assert scratch["madds"] == [round(m, 3) for m in run_exit_madds(tmp_path / "runs" / "scratch")]
    table = format_ablation_table(records).splitlines()
    s = scratch["shortcut"]
    assert table[2:] == [
        f"| static | {static['what']} | {static['val_top1'][0]:.2f} | {static['madds'][-1]:.2f} |  |  |",
        f"| scratch | {scratch['what']} | {scratch['val_top1'][0]:.2f} / {scratch['val_top1'][1]:.2f} | "
        f"{scratch['madds'][-1]:.2f} | {s['specialist_mean_coeffs']:.2f} | {s['drop']:+.2f} |"]
    assert s["drop"] == pytest.approx(s["specialist"] - s["specialist_mean_coeffs"], abs=0.011)
    with pytest.raises(ValueError, match="unknown ablation candidates"):
        run_study("ablation", candidates=["nope"], data=cifar_tree, output=tmp_path / "runs", results=results)


def test_deploy_forms_ratios_and_targets():
    """bench deploy: each record's ratios against the static twin and the synthesis floor, and the issue's
    targets read from them (1 thread only)."""
    from basisnet.bench.deploy_forms import deploy_targets, format_forms_table, ratios

    base = {"workload": "imagenet224", "variant": "v", "threads": 1, "synthesis_floor_ms": 2.0}
    b1 = {**base, "runtime": "onnxruntime", "form": "1", "batch": 1, "lightweight_ms": 3.0, "specialist_ms": 15.0,
          "static_ms": 10.0}
    b8 = {**base, "runtime": "onnxruntime", "form": "8", "batch": 8, "lightweight_ms": 20.0, "specialist_ms": 160.0,
          "static_ms": 100.0}
    eager = {**base, "runtime": "pytorch eager", "form": "-", "batch": 1, "lightweight_ms": 5.0, "whole_ms": 30.0,
             "static_ms": 20.0}
    assert ratios(b1) == {"whole / floor": 18 / 15, "specialist / (static + synthesis)": 15 / 12,
                          "specialist / static": 1.5}
    assert ratios(b8)["specialist / static"] == 1.6  # the per-image floor is stated at batch 1 only
    targets = deploy_targets([b1, b8, eager, {**b1, "threads": 2, "specialist_ms": 99.0}], "v")
    assert [(t["ratio"], t["met"]) for t in targets] == [(1.2, True), (1.25, True), (1.6, False), (1.111, False)]
    assert "imagenet224" in format_forms_table([b1, b8, eager])


def test_cli_study_options_belong_to_the_studies(capsys, tmp_path):
    """An option a study does not take is an argparse error naming it; a bad value of one it takes is refused
    before anything trains."""
    from basisnet.cli import main

    for argv, option in ((["speed", "--seeds", "3"], "--seeds"), (["accuracy", "--teacher", "runs/t"], "--teacher"),
                         (["regime", "--epochs", "3"], "--epochs"), (["ablation", "--quick"], "--quick")):
        with pytest.raises(SystemExit) as stop:
            main(["bench", *argv])
        assert stop.value.code == 2
        assert f"basisnet bench {argv[0]}: error: unrecognized arguments: {option}" in capsys.readouterr().err
    assert main(["bench", "compare", "--teacher", str(tmp_path / "missing"), "--output", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["bench", "compare", "--seeds", "0", "--output", str(tmp_path)]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err


def test_cli_regime_and_distill_plan_from_their_options_and_print_their_tables(monkeypatch, tmp_path, capsys):
    from basisnet.cli import main

    seen = {}
    records = [{"model": "BasisNet", "top1": 60.0, "madds": 5.0, "epochs": 2, "exit": 2, "num_exits": 2,
                "protocol": "anytime"}]
    _fake_execute(monkeypatch, seen, records, train_minutes={"a": 1.0})
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "regime", "--subset", "500", "--lengths", "4", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == [*format_regime_table(records).splitlines(),
                                                    "training: 1.0 min in all (a 1.0)"]
    plan = seen["plan"]
    assert seen["out"] == Path("runs/bench_cifar10_n500") and seen["results"] == Path("benchmarks/results/regime_n500.json")
    assert [(r.name, r.epochs) for r in plan.runs] == [(f"{p}_e{e}", e) for e in (2, 4)
                                                       for p in ("basisnet", "static_w0.5", "condconv")]
    assert all("data.subset=500" in r.overrides and not r.only_if_trained for r in plan.runs)
    _fake_execute(monkeypatch, seen, [], train_minutes={"a": 1.0})
    assert main(["bench", "distill", "--teacher", "t", "--epochs", "3"]) == 0
    assert seen["out"] == Path("runs/bench_cifar10_kd") and seen["results"] == Path("benchmarks/results/distill_kd.json")
    assert {r.epochs for r in seen["plan"].runs} == {3} and all("train.kd_teacher=t" in r.overrides
                                                               for r in seen["plan"].runs)
    assert main(["bench", "distill", "--models", "ranet"]) == 0
    assert [r.name for r in seen["plan"].runs] == ["ranet", "ranet_sd0.5"]


def test_compare_gives_every_peer_the_teacher_and_each_seed_its_own_run(tmp_path):
    from basisnet.bench.study import get_study, resolve_options

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    compare = get_study("compare")
    opts = resolve_options(compare, {"seeds": 3, "teacher": teacher, "output": tmp_path / "runs"})
    runs = compare.plan(opts, opts.output).runs
    assert [r.name for r in runs] == ["basisnet", "basisnet_seed1", "basisnet_seed2", "static_w0.5",
                                      "static_w0.5_seed1", "static_w0.5_seed2", "condconv", "msdnet", "ranet"]
    assert all(f"train.kd_teacher={teacher}" in r.config_overrides for r in runs)
    assert [[o for o in r.config_overrides if o.startswith("train.seed")] for r in runs[:3]] == \
        [[], ["train.seed=1"], ["train.seed=2"]]
    assert [r.extra["seed"] for r in runs] == [0, 1, 2, 0, 1, 2, 0, 0, 0]


def test_regime_with_seeds_and_a_variant_plans_reads_and_tables_them(tmp_path):
    """``--seeds 3``: the headline pair with three seeds at the longest length, the shorter lengths' other
    seeds read only where trained; a length whose compare runs are gone is read from compare's records;
    ``--variant``: BasisNet again at the longest length, every seed. Gains are of the means; the worst
    BasisNet seed is set against the best static seed."""
    from basisnet.bench.regime import regime_gains, variant_label
    from basisnet.bench.study import Kept, get_study, resolve_options

    basisnet, static, condconv = PEERS[0].label, PEERS[1].label, PEERS[2].label
    kept = [{"model": basisnet, "top1": 60.0, "madds": 7.0, "epochs": 2, "exit": 2, "num_exits": 2,
             "protocol": "anytime", "seed": 0}]
    (tmp_path / "compare_n500.json").write_text(json.dumps(kept))
    study = get_study("regime")
    opts = resolve_options(study, dict(subset=500, lengths=[4, 2], seeds=3, output=tmp_path / "runs",
                                       results=tmp_path / "regime_n500.json",
                                       variant=["bd0.3", "model.kwargs.basis_dropout=0.3"]))
    plan = study.plan(opts, opts.output)
    kept_runs = [r for r in plan.runs if isinstance(r, Kept)]
    assert [(r.name, r.records) for r in kept_runs] == [("basisnet_e2", tuple(kept))]  # compare's run of length 2
    trained = {(r.name, r.epochs, r.seed): r.only_if_trained for r in plan.runs if not isinstance(r, Kept)}
    assert trained[("basisnet_e4_seed2", 4, 2)] is False and trained[("static_w0.5_e4_seed1", 4, 1)] is False
    assert trained[("basisnet_e2_seed1", 2, 1)] is True  # a shorter length's other seeds: read if trained
    assert ("condconv_e4_seed1", 4, 1) not in trained  # CondConv: one seed
    variant = [r for r in plan.runs if not isinstance(r, Kept) and r.label == variant_label(["model.kwargs.basis_dropout=0.3"])]
    assert [(r.name, r.seed) for r in variant] == [("basisnet_bd0.3_e4", 0), ("basisnet_bd0.3_e4_seed1", 1),
                                                   ("basisnet_bd0.3_e4_seed2", 2)]
    assert all("model.kwargs.basis_dropout=0.3" in r.overrides and r.epochs == 4 for r in variant)
    with pytest.raises(ValueError, match="--variant takes a NAME and KEY=VALUE"):
        study.plan(resolve_options(study, dict(variant=["model.kwargs.basis_dropout=0.3"])), tmp_path)

    def rec(model, top1, seed, epochs=4):
        return {"model": model, "top1": top1, "madds": 7.0, "epochs": epochs, "exit": 1, "num_exits": 1,
                "protocol": "anytime", "seed": seed}

    records = [rec(basisnet, t, s) for s, t in enumerate((70.0, 72.0, 74.0))]
    records += [rec(static, t, s) for s, t in enumerate((69.0, 71.0, 70.0))] + [rec(condconv, 71.5, 0)]
    records += [rec(variant_label(["x=1"]), t, s) for s, t in enumerate((73.0, 75.0, 74.0))]
    (gain,) = regime_gains(records)
    assert gain == {"epochs": 4, "gain_over_static_pt": 2.0, "gain_over_condconv_pt": 0.5,
                    "seeds": {basisnet: 3, static: 3}, "worst_minus_best_static_pt": -1.0}
    table = format_regime_table(records).splitlines()
    assert table[2] == "| 4 | 3 / 3 | 72.00 (70.00-74.00) | 70.00 (69.00-71.00) | 71.50 | +2.00 | -1.00 | +0.50 |"
    assert table[-1] == f"| {variant_label(['x=1'])} | 4 | 3 | 74.00 (73.00-75.00) | +4.00 | +2.00 |"
