"""End to end on the embedded SHAPES data: train -> sweep -> evaluate -> predict, via library and CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from basisnet.cli import main
from basisnet.configs import bundled_config, list_configs
from basisnet.deploy import EarlyExitPredictor
from basisnet.evaluate import exit_madds
from basisnet.train import load_config
from basisnet.workflow import (denormals_flushed, evaluate_run, exit_logits, load_run, predict_files, sweep_run,
                               train_run)

pytestmark = pytest.mark.xdist_group("workflow")  # one worker computes the shared runs once

TINY = [
    "train.epochs=1", "train.warmup_epochs=0", "data.subset=256", "data.val_size=128", "data.batch_size=64",
    "data.eval_batch_size=128", "model.kwargs.specialist_width=0.35", "model.kwargs.num_bases=2",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "demo"
    cfg = load_config(bundled_config("shapes_demo"), TINY)
    result = train_run(cfg, out, progress=False)
    assert len(result["last_top1"]) == 2
    assert not _flushing(), "training must give the process its denormal mode back"
    return out


def _flushing() -> bool:
    return bool((torch.tensor([1e-40], dtype=torch.float32) * 1.0 == 0).item())


@pytest.mark.parametrize("before", [False, True])
def test_denormals_flushed_restores_the_mode_it_found(before):
    torch.set_flush_denormal(before)
    try:
        with denormals_flushed():
            assert _flushing()
        assert _flushing() == before
    finally:
        torch.set_flush_denormal(False)  # hypothesis, in later tests, refuses to run under flush-to-zero


def test_bundled_configs_load():
    assert {"cifar10_basisnet", "cifar10_static", "shapes_demo"} <= set(list_configs())
    for name in list_configs():
        load_config(bundled_config(name))
    with pytest.raises(FileNotFoundError, match="bundled"):
        bundled_config("nope")


def test_run_directory_contents(run_dir):
    for name in ("config.yaml", "summary.csv", "best.safetensors", "last.safetensors", "last.state.pt",
                 "classes.json"):
        assert (run_dir / name).is_file(), name
    model, cfg = load_run(run_dir)
    assert model.num_exits == 2 and cfg.model.kwargs["num_classes"] == 10


def test_sweep_from_cached_logits(run_dir):
    rows = sweep_run(run_dir, "val", progress=False)
    assert (run_dir / "sweep_val.csv").is_file() and (run_dir / "sweep_val.png").stat().st_size > 0
    assert rows[0]["threshold"] == 0.0 and rows[0]["exit_fraction"] == 1.0
    cache = run_dir / "logits_val.pt"
    stamp = cache.stat().st_mtime_ns
    sweep_run(run_dir, "val", progress=False)
    assert cache.stat().st_mtime_ns == stamp  # the second sweep reused the cached pass
    model, _ = load_run(run_dir)
    counted = json.loads((run_dir / "exit_madds.json").read_text())
    assert counted == [m / 1e6 for m in exit_madds(model)]


def test_evaluate_protocols(run_dir):
    report = evaluate_run(run_dir, "early-exit", max_drop=1.0, progress=False)
    result = report["result"]
    assert report["exit_madds"][0] <= result["madds"] <= report["exit_madds"][1]
    any_time = evaluate_run(run_dir, "anytime", progress=False)["result"]
    assert [r["madds"] for r in any_time] == report["exit_madds"]
    budget = evaluate_run(run_dir, "budgeted", progress=False)["result"]
    assert len(budget) == 39
    with pytest.raises(ValueError, match="needs exactly one of --threshold"):
        evaluate_run(run_dir, "early-exit")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate_run(run_dir, "early-exit", threshold=1.5)


def test_early_exit_predictor_runs_specialist_only_on_unsure_images(run_dir):
    model, _ = load_run(run_dir)
    n = 6
    x = torch.randn(n, 3, 32, 32)
    with torch.no_grad():
        full = model(x)
    always = EarlyExitPredictor(model, threshold=1.0).predict(x)  # nobody is that confident: all reach exit 2
    assert torch.equal(always.stage, torch.ones(n, dtype=torch.long))
    torch.testing.assert_close(always.classes, full[1].argmax(-1))
    never = EarlyExitPredictor(model, threshold=0.0).predict(x)
    assert torch.equal(never.stage, torch.zeros(n, dtype=torch.long))
    torch.testing.assert_close(never.classes, full[0].argmax(-1))
    assert never.average_madds < always.average_madds
    # A mixed batch (the specialist on the undecided images only) is test_protocol.py's
    # test_early_exit_predictor_computes_only_for_undecided_images: after one epoch this run's lightweight
    # exit is near-uniform (confidences within 1e-6), so no threshold here could split it without a tie.


def test_predict_files_and_bad_images(run_dir, tmp_path):
    good = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(good)
    gray = tmp_path / "b.jpg"
    Image.fromarray(np.full((32, 32), 128, dtype=np.uint8)).save(gray)
    rows = predict_files(run_dir, [good, gray], threshold=0.5)
    assert [r["file"] for r in rows] == [str(good), str(gray)]
    assert all(r["stage"] in (1, 2) and 0 <= r["confidence"] <= 1 for r in rows)
    broken = tmp_path / "c.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="c.jpg"):
        predict_files(run_dir, [good, broken], threshold=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        predict_files(run_dir, [good], threshold=-0.1)


def test_cli_overrides_anywhere_on_the_line(tmp_path, capsys):
    """Overrides before, between and after options resolve to the same config (argparse's intermixed parsing)."""
    out = str(tmp_path / "x")
    lines = [["train", "--config", "cifar10_static", "--output", out, "data.source=shapes", "train.epochs=6",
              "--dry-run"],
             ["train", "--output", out, "data.source=shapes", "--config", "cifar10_static", "train.epochs=6",
              "--dry-run"],
             ["train", "data.source=shapes", "--dry-run", "train.epochs=6", "--config", "cifar10_static", "--output",
              out]]
    printed = []
    for argv in lines:
        assert main(argv) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1] == printed[2] and "epochs: 6" in printed[0] and "source: shapes" in printed[0]


def test_cli_round_trip(run_dir, tmp_path, capsys):
    assert main(["evaluate", str(run_dir), "--threshold", "0.7", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["result"]["threshold"] == 0.7
    assert main(["sweep", str(run_dir)]) == 0
    assert "threshold" in capsys.readouterr().out
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    assert main(["predict", str(run_dir), str(image)]) == 0
    assert "stage" in capsys.readouterr().out
    # bad input: clear error, exit code 2
    assert main(["evaluate", str(run_dir), "--threshold", "2"]) == 2
    assert "threshold" in capsys.readouterr().err
    assert main(["train", "--config", "shapes_demo", "--output", str(tmp_path / "r"), "train.lrr=0.1"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["train", "--config", "shapes_demo", "--output", str(tmp_path / "r"), "data.source=/no/such/dir"]) == 2
    assert "/no/such/dir" in capsys.readouterr().err


def test_cli_shortcut_diagnostic(run_dir, tmp_path, capsys):
    assert main(["shortcut", str(run_dir), "--limit", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["drop"] == pytest.approx(report["specialist"] - report["specialist_mean_coeffs"])
    assert json.loads((run_dir / "shortcut_val.json").read_text())["images"] == 64
    static = tmp_path / "static"
    train_run(load_config(None, ["model.name=mobilenetv3_small", "model.kwargs.width=0.35", "model.kwargs.drop_strides=2",
                                 *TINY[:6]]), static, progress=False)
    assert main(["shortcut", str(static)]) == 2
    assert "for BasisNet" in capsys.readouterr().err


def test_wrong_class_count_is_rejected(tmp_path):
    cfg = load_config(bundled_config("shapes_demo"), [*TINY, "model.kwargs.num_classes=7"])
    with pytest.raises(ValueError, match="num_classes is 7 but shapes has 10 classes"):
        train_run(cfg, tmp_path / "r", progress=False)


def test_train_refuses_to_overwrite_a_run(run_dir):
    cfg = load_config(run_dir / "config.yaml")
    with pytest.raises(ValueError, match="already holds a run"):
        train_run(cfg, run_dir, progress=False)
    assert exit_logits(run_dir, "val").num_exits == 2


def test_subset_samples_every_class_of_a_class_ordered_tree(tmp_path):
    from basisnet.inputs import load_splits

    for cls in ("a", "b", "c"):
        folder = tmp_path / "train" / cls
        folder.mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((8, 8, 3), i * 20, dtype=np.uint8)).save(folder / f"{i}.png")
    cfg = load_config(None, [f"data.source={tmp_path}", "data.val_size=6", "data.subset=9", "data.image_size=8"])
    splits = load_splits(cfg)
    assert len(splits.train) == 9
    assert set(splits.train.targets.tolist()) == {0, 1, 2}  # a prefix of the sorted indices would be class 0 only
    too_many = load_config(None, [f"data.source={tmp_path}", "data.val_size=6", "data.subset=25", "data.image_size=8"])
    with pytest.raises(ValueError, match="data.subset=25 exceeds the 24 training images left"):
        load_splits(too_many)


def test_specialize_writes_the_specialist_of_the_mean_coefficients(run_dir, tmp_path, capsys):
    """The specialized file loads as an ordinary MobileNet equal to synthesize() of the mean coefficients."""
    from basisnet.deploy import mean_coefficients
    from basisnet.models import MobileNet
    from basisnet.train import load_run_model
    from basisnet.models import create_model
    from basisnet.data import load_image_files
    from basisnet.inputs import eval_transform

    camera = tmp_path / "camera" / "day1"
    camera.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(camera / f"{i}.png")
    out = tmp_path / "camera.safetensors"
    assert main(["specialize", str(run_dir), "--data", str(tmp_path / "camera"), "--output", str(out)]) == 0
    assert "5 images" in capsys.readouterr().out
    static = load_run_model(out, create_model)
    assert type(static) is MobileNet and static.num_basis_layers == 0
    model, cfg = load_run(run_dir)
    x = eval_transform(cfg)(load_image_files(sorted(camera.glob("*.png")), cfg.data.image_size))
    coeffs, count = mean_coefficients(model, [x[:2], x[2:]])
    assert count == 5
    with torch.no_grad():
        torch.testing.assert_close(static(x)[0], model.specialist(x, coeffs)[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(static(x)[0], model.specialist.synthesize(coeffs)(x)[0], rtol=1e-5, atol=1e-6)
    assert main(["specialize", str(run_dir), "--data", str(tmp_path / "empty*"), "--output", str(out)]) == 2
    assert "no image files" in capsys.readouterr().err


def test_evaluate_for_a_latency_target(run_dir, capsys):
    """--target-ms: exit latencies measured in the runtime (here PyTorch eager; ONNX Runtime in test_onnx), the
    threshold picked on val within the target, its mean time then measured on test images."""
    report = evaluate_run(run_dir, target_ms=1e6, runtime="torch", latency_images=8)  # no budget: most accurate
    exit_ms = report["exit_ms"]
    assert report["runtime"] == "torch" and report["measured_ms_test"] > 0
    assert len(exit_ms) == 2 and 0 < exit_ms[0] < exit_ms[1]
    assert exit_ms[0] <= report["mean_ms_val"] <= exit_ms[1] and report["mean_ms_test"] <= exit_ms[1]
    tight = evaluate_run(run_dir, target_ms=(exit_ms[0] + exit_ms[1]) / 2, runtime="torch", latency_images=8)
    assert tight["mean_ms_val"] <= (tight["exit_ms"][0] + tight["exit_ms"][1]) / 2 * 1.05
    with pytest.raises(ValueError, match="below the fastest exit"):
        evaluate_run(run_dir, target_ms=1e-6, runtime="torch")
    with pytest.raises(ValueError, match="exactly one"):
        evaluate_run(run_dir, target_ms=5.0, threshold=0.5)
    with pytest.raises(ValueError, match="runtime must be one of"):
        evaluate_run(run_dir, target_ms=5.0, runtime="tflite")
    assert main(["evaluate", str(run_dir), "--target-ms", "1000", "--runtime", "torch"]) == 0
    assert "latency here (torch, batch 1)" in capsys.readouterr().out
