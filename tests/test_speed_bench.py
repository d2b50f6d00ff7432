"""The speed benchmark end to end on a tiny plan: records, ceiling, targets, plot, CLI. Its numbers are
not asserted (speed is measured in benchmarks, never in tests); its bookkeeping is."""

import json
import os
import sys

import pytest
import torch

from basisnet.bench import SpeedPlan, format_speed_table, format_speed_targets, run_speed_benchmark
from basisnet.bench.speed import speed_targets
from basisnet.bench.timing import measure_ceiling, peak_memory_mib
from basisnet.deploy.latency import median_ms
from basisnet.cli import main

TINY_PLAN = SpeedPlan(workloads=("cifar32",), batches=(1, 4), train_batch=4, repeats=1, exit_shares=(0.5,),
                      compile=False)
RECORD_KEYS = {"model", "mode", "batch", "ms", "images_per_s", "madds", "device", "threads", "gmadds_per_s",
               "ceiling_fraction", "peak_mib", "workload", "command"}


@pytest.fixture(scope="module")
def speed_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("speed") / "speed.json"
    records = run_speed_benchmark(results, TINY_PLAN, devices=["cpu"], command="test")
    return results, records


@pytest.mark.xdist_group("speed_run")
def test_speed_records_cover_every_model_and_mode(speed_run):
    results, records = speed_run
    assert json.loads(results.read_text()) == records
    assert all(RECORD_KEYS <= set(r) for r in records)
    assert all(r["ms"] > 0 and r["device"] == "cpu" for r in records)
    seen = {(r["model"], r["mode"]) for r in records}
    for expected in [("static twin", "eager NCHW"), ("static twin", "channels_last"),
                     ("basis specialist", "tuned paths"), ("basis specialist", "default paths"),
                     ("basis specialist", "shared coeffs (synthesized)"), ("basis specialist", "kernel synthesis only"),
                     ("BasisNet (no early exit)", "channels_last"), ("static twin", "train step"),
                     ("BasisNet", "train step"), ("cifar10_condconv", "train step")]:
        assert expected in seen
    early = [r for r in records if r.get("saving_ratio") is not None or "early exit" in r["mode"]]
    assert {r["model"] for r in early} == {"BasisNet", "cifar10_msdnet", "cifar10_ranet"}
    for r in early:  # the exit fractions of a run add up and the stage times cover the full forward
        assert sum(r["exit_fraction"]) == pytest.approx(1.0)
        assert 0 <= r["madds_saving"] < 1 and len(r["stage_ms"]) == len(r["exit_fraction"])
    floor = next(r for r in records if r["model"].startswith("floor"))
    assert floor["synthesis_floor_ms"] > 0 and floor["basis_mib"] > 0
    assert all(r["peak_mib"] is not None for r in records if r["mode"] == "train step")


@pytest.mark.xdist_group("speed_run")
def test_speed_meta_targets_table_and_plot(speed_run):
    results, records = speed_run
    meta = json.loads(results.with_name("speed_meta.json").read_text())
    assert meta["ceilings"]["cpu"]["matmul_gmadds_per_s"] > 0 and meta["ceilings"]["cpu"]["copy_gb_per_s"] > 0
    assert meta["targets"] == speed_targets(records)
    names = " ".join(t["target"] for t in meta["targets"])
    for part in ("throughput", "batch 1", "training step", "wall-clock saving"):
        assert part in names
    for t in meta["targets"]:  # each verdict follows from its number
        higher_is_better = "throughput" in t["target"] or "saving" in t["target"]
        assert t["met"] is (t["ratio"] >= t["limit"] if higher_is_better else t["ratio"] <= t["limit"]), t
    train = next(t for t in meta["targets"] if t["target"].startswith("BasisNet training step"))
    step_ms = {r["model"]: r["ms"] for r in records if r["mode"] == "train step"}
    assert train["ratio"] == pytest.approx(step_ms["BasisNet"] / step_ms["static twin"], abs=1e-3)
    assert results.with_name("speed_cpu.png").stat().st_size > 0
    table = format_speed_table(records)
    assert "basis specialist" in table and "synthesis floor" in table
    assert format_speed_targets(meta["targets"]).count("\n") == len(meta["targets"]) - 1


def _record(model, mode, batch, ms, **extra):
    return {"device": "cpu", "workload": "w", "model": model, "mode": mode, "batch": batch, "ms": ms,
            "images_per_s": batch * 1000 / ms, **extra}


def test_speed_targets_state_each_ratio_and_verdict():
    """Hand-made records: the ratio of each target is the one its records give, and met follows from it."""
    records = [
        _record("static twin", "eager NCHW", 4, 10.0), _record("static twin", "channels_last", 4, 8.0),
        _record("basis specialist", "tuned paths", 4, 9.0), _record("basis specialist", "default paths", 4, 12.0),
        _record("basis specialist", "shared coeffs (synthesized)", 4, 1.0),  # not a per-image forward: left out
        _record("basis specialist", "kernel synthesis only", 4, 0.5),
        _record("floor: lightweight + static + synthesis", "floor", 1, 2.0),
        _record("BasisNet (no early exit)", "eager", 1, 3.0),
        _record("BasisNet (no early exit)", "channels_last", 1, 2.1),
        _record("static twin", "train step", 4, 10.0), _record("BasisNet", "train step", 4, 14.0),
        _record("cifar10_msdnet", "early exit", 4, 5.0, saving_ratio=0.95),
        _record("cifar10_ranet", "early exit", 4, 5.0, saving_ratio=0.5),
    ]
    at = {"device": "cpu", "workload": "w"}
    assert speed_targets(records) == [
        {"target": "basis specialist throughput vs static twin's eager modes (compiled not measured), batch 4",
         "ratio": 0.889, "limit": 0.9, "met": False, "basis_mode": "tuned paths", "static_mode": "channels_last", **at},
        {"target": "BasisNet batch 1 vs lightweight + static specialist + synthesis floor", "ratio": 1.05,
         "limit": 1.10, "met": True, **at},
        {"target": "BasisNet training step vs static specialist", "ratio": 1.4, "limit": 1.3, "met": False, **at},
        {"target": "cifar10_msdnet early-exit wall-clock saving / MAdds saving (early exit)", "ratio": 0.95,
         "limit": 0.9, "met": True, **at},
        {"target": "cifar10_ranet early-exit wall-clock saving / MAdds saving (early exit)", "ratio": 0.5,
         "limit": 0.9, "met": False, **at},
    ]
    lines = format_speed_targets(speed_targets(records)).splitlines()
    assert lines[0].startswith("MISSED") and "0.889 (target >= 0.9)" in lines[0]
    assert lines[1].startswith("MET") and "1.050 (target <= 1.1)" in lines[1]


def test_instruments(capfd):
    device = torch.device("cpu")
    calls = []
    assert median_ms(lambda: calls.append(1), device, warmup=2, repeats=3) >= 0 and len(calls) == 5
    x = torch.randn(256, 1024)
    capfd.readouterr()
    peak = peak_memory_mib(lambda: (x * 2) + 1, device)  # two 1 MiB temporaries at most
    assert 0.9 <= peak <= 2.5
    assert capfd.readouterr().err == ""  # the profiler's start / stop notices stay out of the bench's output

    def speaks() -> None:
        print("a real message", file=sys.stderr)
        os.write(2, b"a native one\n")

    peak_memory_mib(speaks, device)
    assert capfd.readouterr().err == "a real message\na native one\n"  # what the measured code says is passed on
    ceiling = measure_ceiling(device, quick=True)
    assert ceiling.matmul_gmadds_per_s > 0 and ceiling.copy_gb_per_s > 0


def test_cli_speed_rejects_options_of_other_benchmarks(capsys):
    for argv in (["speed", "--epochs", "3"], ["compare", "--threads", "1"]):
        with pytest.raises(SystemExit):
            main(["bench", *argv])
        assert f"basisnet bench {argv[0]}: error: unrecognized arguments: {argv[1]}" in capsys.readouterr().err


def test_cli_speed_json_lines(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(SpeedPlan, "quick_plan", classmethod(lambda cls: TINY_PLAN))
    results = tmp_path / "s.json"
    torch.set_num_threads(2)  # --threads must change it (make test's workers already run 1 thread)
    assert main(["bench", "speed", "--quick", "--json", "--threads", "1", "--results", str(results)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert records == json.loads(results.read_text())
    assert all(r["threads"] == 1 and r["command"].startswith("basisnet bench speed --quick") for r in records)
    assert main(["bench", "speed", "--quick", "--threads", "1", "--results", str(results)]) == 0
    last = capsys.readouterr().out.splitlines()[-1]  # the table's run ends saying where its files went
    assert last.startswith(f"wrote {results} (records), {tmp_path / 's_meta.json'} (targets, ceilings)")


def test_gpu_check_fails_clearly_without_a_gpu(monkeypatch, tmp_path, capsys):
    """`make gpu-check` on a machine without CUDA: a clear error and a non-zero exit, no results file."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    results = tmp_path / "gpu_check.json"
    assert main(["bench", "gpu", "--results", str(results)]) != 0
    assert "no CUDA device is visible" in capsys.readouterr().err and not results.exists()

