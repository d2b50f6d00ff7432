"""End to end on the embedded SHAPES data: train -> sweep -> evaluate -> predict, via library and CLI."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from basisnet.cli import main
from basisnet.configs import bundled_config, list_configs
from basisnet.deploy import EarlyExitPredictor, TorchStages
from basisnet.evaluate import apply_threshold, exit_madds, threshold_sweep
from basisnet.train import load_config
from helpers import SHAPES_TINY, spread_logits
from basisnet.workflow import (denormals_flushed, evaluate_run, exit_logits, load_run, predict_files, sweep_run,
                               train_run)

pytestmark = pytest.mark.xdist_group("workflow")  # one worker computes the shared runs once

@pytest.fixture(scope="module")
def run_dir(shapes_run, tmp_path_factory):
    """The shared tiny run, copied: this module's tests write sweeps, caches and evaluations into it."""
    assert not _flushing(), "training must give the process its denormal mode back"
    return shutil.copytree(shapes_run, tmp_path_factory.mktemp("runs") / "demo")


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
    report = evaluate_run(run_dir, "early-exit", threshold=0.5, progress=False)
    any_time = evaluate_run(run_dir, "anytime", progress=False)["result"]
    assert [r["madds"] for r in any_time] == report["exit_madds"]
    assert [r["top1"] for r in any_time] == pytest.approx(report["exit_top1_test"])  # each exit alone on test
    budget = evaluate_run(run_dir, "budgeted", progress=False)["result"]
    assert len(budget) == 39
    with pytest.raises(ValueError, match="needs exactly one of --threshold"):
        evaluate_run(run_dir, "early-exit")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate_run(run_dir, "early-exit", threshold=1.5)


def test_thresholds_zero_and_one_send_every_image_of_a_run_to_one_exit(run_dir):
    """On a loaded run: threshold 1 runs the specialist on every image, threshold 0 on none (it is never
    called), each charged its exit's MAdds. A mixed batch (the specialist on the undecided images only) is
    test_stages.py's test_stages_keep_the_contract: after one epoch this
    run's lightweight exit is near-uniform (confidences within 1e-6), so no threshold here could split it
    without a tie."""
    model, _ = load_run(run_dir)
    n = 6
    x = torch.randn(n, 3, 32, 32)
    with torch.no_grad():
        full = model(x)
    costs = exit_madds(model)
    calls = []
    original_step = model.step
    model.step = lambda state, k: (calls.append(k), original_step(state, k))[1]
    always = EarlyExitPredictor(TorchStages(model), threshold=1.0).predict(x)  # nobody is that confident: all reach exit 2
    assert torch.equal(always.exit, torch.full((n,), 2))
    torch.testing.assert_close(always.classes, full[1].argmax(-1))
    assert always.average_madds == pytest.approx(costs[1])
    calls.clear()  # the first answer counted the exits' MAdds, running the model
    never = EarlyExitPredictor(TorchStages(model, exit_costs=costs), threshold=0.0).predict(x)
    assert calls == [0]  # the specialist's stage never ran
    assert torch.equal(never.exit, torch.ones(n, dtype=torch.long))
    torch.testing.assert_close(never.classes, full[0].argmax(-1))
    assert never.average_madds == pytest.approx(costs[0])


@pytest.fixture(scope="module")
def responsive_run(shapes_run, tmp_path_factory):
    """The shared tiny run with weights whose answers depend on the image (``spread_logits``: after one epoch
    the run's own answers barely do, so a test of what reaches the model could not fail)."""
    from safetensors import safe_open

    from basisnet.train import save_weights

    run = shutil.copytree(shapes_run, tmp_path_factory.mktemp("runs") / "responsive")
    model, _ = load_run(run)
    spread_logits(model)
    for name in ("best.safetensors", "last.safetensors"):
        with safe_open(run / name, "pt") as f:
            metadata = f.metadata()
        save_weights(model, run / name, metadata)
    return run


def test_predict_files_and_bad_images(responsive_run, tmp_path):
    run_dir = responsive_run
    good = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(good)
    gray = tmp_path / "b.jpg"
    Image.fromarray(np.full((32, 32), 128, dtype=np.uint8)).save(gray)
    rows = predict_files(run_dir, [good, gray], threshold=0.5)
    assert [r["file"] for r in rows] == [str(good), str(gray)]
    # each file answered as the predictor answers its decoded, resized, normalized pixels
    from basisnet.data import load_image_files
    from basisnet.inputs import eval_transform

    model, cfg = load_run(run_dir)
    classes = json.loads((run_dir / "classes.json").read_text())
    x = eval_transform(cfg)(load_image_files([good, gray], cfg.data.image_size))
    assert x.shape == (2, 3, 32, 32)  # the 40x50 colour image and the gray one, at the run's image size
    expected = EarlyExitPredictor(TorchStages(model), 0.5).predict(x)
    assert [r["class"] for r in rows] == [classes[c] for c in expected.classes.tolist()]
    assert [r["exit"] for r in rows] == expected.exit.tolist()
    assert [r["confidence"] for r in rows] == pytest.approx(expected.confidence.tolist(), rel=1e-5)
    assert [r["madds_m"] for r in rows] == pytest.approx([m / 1e6 for m in expected.madds.tolist()])
    assert abs(rows[0]["confidence"] - rows[1]["confidence"]) > 1e-3  # the answers depend on the pixels
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
    """The CLI prints what the library computes: the evaluation report, the sweep's rows, the predictions."""
    assert main(["evaluate", str(run_dir), "--threshold", "0.7", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["result"]["threshold"] == 0.7
    assert report["result"] == evaluate_run(run_dir, "early-exit", threshold=0.7, progress=False)["result"]
    assert main(["sweep", str(run_dir)]) == 0
    printed = capsys.readouterr().out.splitlines()
    rows = sweep_run(run_dir, "val", progress=False)
    shown = [line.split() for line in printed[1:-1]]
    assert shown and [float(t) for t, *_ in shown] == [round(r["threshold"], 3) for r in rows[::len(rows) // 20]]
    assert [float(a) for _, a, *_ in shown] == [round(r["top1"], 2) for r in rows[::len(rows) // 20]]
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    assert main(["predict", str(run_dir), str(image)]) == 0
    (row,) = predict_files(run_dir, [image], threshold=0.5)  # predict's default threshold
    assert capsys.readouterr().out.split("\t")[:4] == [str(image), row["class"], f"{row['confidence']:.3f}",
                                                       f"exit {row['exit']}"]
    # bad input: clear error, exit code 2
    assert main(["evaluate", str(run_dir), "--threshold", "2"]) == 2
    assert "threshold" in capsys.readouterr().err
    assert main(["train", "--config", "shapes_demo", "--output", str(tmp_path / "r"), "train.lrr=0.1"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["train", "--config", "shapes_demo", "--output", str(tmp_path / "r"), "data.source=/no/such/dir"]) == 2
    assert "/no/such/dir" in capsys.readouterr().err


def test_cli_shortcut_diagnostic(run_dir, tmp_path, capsys):
    assert main(["shortcut", str(run_dir), "--limit", "16", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["drop"] == pytest.approx(report["specialist"] - report["specialist_mean_coeffs"])
    assert json.loads((run_dir / "shortcut_val.json").read_text())["images"] == 16
    static = tmp_path / "static"
    train_run(load_config(None, ["model.name=mobilenetv3_small", "model.kwargs.width=0.35", "model.kwargs.drop_strides=2",
                                 *SHAPES_TINY[:5]]), static, progress=False)
    assert main(["shortcut", str(static)]) == 2
    assert "for BasisNet" in capsys.readouterr().err


def test_wrong_class_count_is_rejected(tmp_path):
    cfg = load_config(bundled_config("shapes_demo"), [*SHAPES_TINY, "model.kwargs.num_classes=7"])
    with pytest.raises(ValueError, match="num_classes is 7 but shapes has 10 classes"):
        train_run(cfg, tmp_path / "r", progress=False)


def test_train_refuses_to_overwrite_a_run(run_dir):
    cfg = load_config(run_dir / "config.yaml")
    with pytest.raises(ValueError, match="already holds a run"):
        train_run(cfg, run_dir, progress=False)
    assert exit_logits(run_dir, "val").num_exits == 2


def test_subset_samples_every_class_of_a_class_ordered_tree(tmp_path):
    from basisnet.inputs import load_splits
    from basisnet.resolve import resolve_run

    for cls in ("a", "b", "c"):
        folder = tmp_path / "train" / cls
        folder.mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((8, 8, 3), i * 20, dtype=np.uint8)).save(folder / f"{i}.png")
    cfg = load_config(None, [f"data.source={tmp_path}", "data.val_size=6", "data.subset=9", "data.image_size=8"])
    splits = load_splits(resolve_run(cfg))
    assert len(splits.train) == 9
    assert set(splits.train.targets.tolist()) == {0, 1, 2}  # a prefix of the sorted indices would be class 0 only
    too_many = load_config(None, [f"data.source={tmp_path}", "data.val_size=6", "data.subset=25", "data.image_size=8"])
    with pytest.raises(ValueError, match="data.subset=25 exceeds the 24 training images left"):
        load_splits(resolve_run(too_many))


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


def test_every_weights_file_basisnet_writes_predicts_and_exports_where_a_run_does(run_dir, tmp_path, capsys):
    """A run's best weights (inside its run or copied out) and specialize's file serve as the run does:
    ``predict`` answers the same for the run and its best weights; the specialist predicts with the run's
    classes and preprocessing; ``export`` writes them beside its stages; ``evaluate`` names what it needs."""
    from basisnet.served import Preprocess, open_served

    images = tmp_path / "cam"
    images.mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"{i}.png")
    files = [str(p) for p in sorted(images.glob("*.png"))]

    def predicted(model) -> list[list[str]]:
        capsys.readouterr()
        assert main(["predict", str(model), *files, "--threshold", "0.5"]) == 0, capsys.readouterr().err
        return [line.split("\t") for line in capsys.readouterr().out.splitlines()]

    by_run = predicted(run_dir)
    assert predicted(run_dir / "best.safetensors") == by_run  # its run's classes and preprocessing, beside it
    copied = tmp_path / "shipped.safetensors"
    shutil.copy(run_dir / "best.safetensors", copied)
    assert main(["predict", str(copied), *files]) == 2  # out of its run, nothing says how to prepare an image
    assert "records no preprocessing" in capsys.readouterr().err

    cfg = load_config(run_dir / "config.yaml")
    special = tmp_path / "cam.safetensors"
    assert main(["specialize", str(run_dir), "--data", str(images), "--output", str(special)]) == 0
    served = open_served(special)
    assert served.preprocess == Preprocess.of(cfg.data)
    assert served.classes == json.loads((run_dir / "classes.json").read_text())
    rows = predicted(special)
    static = served.build()
    from basisnet.data import load_image_files

    with torch.no_grad():
        probs = static(served.preprocess.transform()(load_image_files(files, cfg.data.image_size)))[0].softmax(-1)
    assert [r[1] for r in rows] == [served.classes[k] for k in probs.argmax(-1).tolist()]
    assert [r[3] for r in rows] == ["exit 1"] * 4  # one exit: a static network

    pytest.importorskip("onnxscript")
    assert main(["export", str(special), "--batch", "1", "--output", str(tmp_path / "onnx")]) == 0
    manifest = json.loads((tmp_path / "onnx" / "stages.json").read_text())
    assert manifest["num_exits"] == 1 and manifest["preprocess"]["mean"] == list(cfg.data.mean)
    assert json.loads((tmp_path / "onnx" / "classes.json").read_text()) == served.classes
    capsys.readouterr()
    assert main(["evaluate", str(special)]) == 2
    assert "is a file, not a run directory" in capsys.readouterr().err


def test_evaluate_for_a_latency_target(run_dir, capsys, monkeypatch):
    """--target-ms: the threshold is picked on val from each exit's latency weighted by the exit fractions,
    the most accurate within the target; the picked threshold is then timed on test images. The verdicts use
    fixed exit latencies (the real timer is run, never compared): no result depends on this machine's speed."""
    from basisnet.workflow import _LatencyRunner

    real = evaluate_run(run_dir, target_ms=1e6, runtime="torch", latency_images=4)  # measured for real once
    assert report_keys(real) and len(real["exit_ms"]) == 2 and all(ms > 0 for ms in real["exit_ms"])
    assert real["measured_ms_test"] > 0

    timed = []
    monkeypatch.setattr(_LatencyRunner, "exit_latency_ms", lambda self: [1.0, 3.0])
    monkeypatch.setattr(_LatencyRunner, "measure", lambda self, threshold, images: timed.append(threshold) or 2.5)
    val = exit_logits(run_dir, "val")
    for target in (1.0, 1.5, 2.0, 3.0, 1e6):
        report = evaluate_run(run_dir, target_ms=target, runtime="torch", latency_images=8)
        threshold = report["result"]["threshold"]
        assert report["exit_ms"] == [1.0, 3.0] and report["measured_ms_test"] == 2.5 and timed[-1] == threshold
        picked = apply_threshold(val, [1.0, 3.0], threshold)
        assert report["mean_ms_val"] == pytest.approx(picked["madds"]) and picked["madds"] <= target * (1 + 1e-9)
        assert all(row["top1"] <= picked["top1"] for row in threshold_sweep(val, [1.0, 3.0]) if row["madds"] <= target)
        assert report["mean_ms_test"] == pytest.approx(apply_threshold(exit_logits(run_dir, "test"), [1.0, 3.0],
                                                                       threshold)["madds"])
    with pytest.raises(ValueError, match="below the fastest exit"):
        evaluate_run(run_dir, target_ms=0.5, runtime="torch")
    with pytest.raises(ValueError, match="exactly one"):
        evaluate_run(run_dir, target_ms=5.0, threshold=0.5)
    with pytest.raises(ValueError, match="runtime must be one of"):
        evaluate_run(run_dir, target_ms=5.0, runtime="tflite")
    assert main(["evaluate", str(run_dir), "--target-ms", "2", "--runtime", "torch"]) == 0
    out = capsys.readouterr().out
    assert "latency here (torch, batch 1): exits answer in 1.00, 3.00 ms" in out and "measured on test 2.50 ms" in out


def report_keys(report: dict) -> bool:
    return {"runtime", "exit_ms", "mean_ms_val", "mean_ms_test", "measured_ms_test", "target_ms"} <= set(report)


def test_predict_defaults_to_the_threshold_evaluate_picked(tmp_path):
    from basisnet.served import DEFAULT_THRESHOLD, RunModel
    from basisnet.train import RunDir

    run = RunModel(tmp_path)
    assert run.threshold()[0] == DEFAULT_THRESHOLD and "basisnet evaluate" in run.threshold()[1]
    RunDir(tmp_path).evaluation("early-exit").write_text(json.dumps({"result": {"threshold": 0.625}}))
    assert run.threshold()[0] == 0.625


def test_a_run_at_chance_is_named():
    from basisnet.workflow import chance_warning

    assert "at chance (10.0% for 10 classes)" in chance_warning(10.4, 10)
    assert chance_warning(14.4, 10) is not None and chance_warning(14.6, 10) is None
    assert chance_warning(52.0, 2) is not None and chance_warning(53.0, 2) is None
