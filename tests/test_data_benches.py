"""The loader and training-loop benchmarks run end to end on tiny inputs and write their records."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from basisnet.bench.loader import LoaderPlan, format_loader_table, generate_jpegs, run_loader_benchmark
from basisnet.bench.train_speed import TARGET, TrainSpeedPlan, format_train_speed_table, run_train_speed_benchmark


def test_loader_benchmark_records_every_recipe_and_worker_count(tmp_path: Path) -> None:
    cifar = tmp_path / "cifar" / "train"
    for c in range(2):
        (cifar / f"k{c}").mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.full((32, 32, 3), 20 * i, np.uint8)).save(cifar / f"k{c}" / f"{i}.jpg")
    plan = LoaderPlan(workers=(0, 1), cifar_images=20, large_images=6, large_size=(50, 40))
    records = run_loader_benchmark(cifar.parent, tmp_path / "loader.json", plan, scratch=tmp_path / "scratch")
    assert {r["workers"] for r in records} == {0, 1}
    assert {r["images"] for r in records} == {20, 6}
    assert all(r["images_per_s"] > 0 and r["ratio"] == round(r["images_per_s"] / r["bare_decode_per_s"], 3)
               for r in records)
    assert json.loads((tmp_path / "loader.json").read_text()) == records
    assert json.loads((tmp_path / "loader_meta.json").read_text())["target_ratio"] == 0.8
    table = format_loader_table(records).splitlines()
    assert len(table) == len(records) + 2  # header, rule, one row per record
    for row, r in zip(table[2:], records):  # each row states its ratio and the verdict that follows from it
        assert f"| {r['ratio']:.2f} | {'yes' if r['ratio'] >= 0.8 else 'no'} |" in row
    assert len(list(generate_jpegs(tmp_path / "scratch" / "jpeg50x40", 6, (50, 40)).rglob("*.jpg"))) == 6


def test_train_benchmark_compares_the_loop_with_a_bare_loop(tmp_path: Path) -> None:
    plan = TrainSpeedPlan(configs=("cifar10_static",), steps=2, batch=8)
    records = run_train_speed_benchmark("shapes", tmp_path / "train.json", plan, scratch=tmp_path / "runs")
    (r,) = records
    assert (r["config"], r["batch"], r["steps"], r["device"]) == ("cifar10_static", 8, 2, "cpu")
    # the loop's rate is the one its training run measured (the run's summary), the ratio that of the two rates
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("cifar10_static_cpu_")
    summary = list(csv.DictReader((run_dir / "summary.csv").open()))
    assert r["train_images_per_s"] == pytest.approx(float(summary[0]["images_per_s"]), abs=0.051)
    assert r["bare_images_per_s"] > 0
    assert r["ratio"] == pytest.approx(r["train_images_per_s"] / r["bare_images_per_s"], rel=1e-3, abs=1e-3)
    assert json.loads((tmp_path / "train.json").read_text()) == records
    assert json.loads((tmp_path / "train_meta.json").read_text())["target_ratio"] == TARGET
    header, rule, row = format_train_speed_table(records).splitlines()
    assert row == (f"| cifar10_static | cpu | {r['amp']} | 8 | 2 | {r['train_images_per_s']:.0f} | "
                   f"{r['bare_images_per_s']:.0f} | {r['ratio']:.2f} |")
