"""bench transfer end to end on a tiny 4-class tree: sources, the four target runs, records, plot, reuse."""
import json

import numpy as np
import pytest
from PIL import Image

from basisnet.bench import format_records_table, format_transfer_targets, run_study
from basisnet.evaluate import exit_accuracy
from basisnet.train import RunDir
from basisnet.workflow import exit_logits
from helpers import committed_record_keys

TINY = ["data.batch_size=16", "data.eval_batch_size=32", "train.warmup_epochs=0", "train.log_interval=1"]
COLOURS = ("a_red", "b_green", "c_blue", "d_grey")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """4 classes of 32x32 images told apart by colour: train 14 each, test 4 each."""
    root = tmp_path_factory.mktemp("cifar4")
    rng = np.random.default_rng(0)
    for split, n in (("train", 14), ("test", 4)):
        for c, cls in enumerate(COLOURS):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
                img[..., c % 3] += 150 if c < 3 else 0
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


@pytest.mark.slow
def test_transfer_benchmark_upcycles_from_the_sources_and_reuses_runs(tree, tmp_path, capsys):
    out, results = tmp_path / "runs", tmp_path / "transfer.json"
    plan = dict(quick=True, epochs=1, per_class=10, source_per_class=12)
    records = run_study("transfer", data=tree, output=out, results=results, overrides=TINY, **plan)
    assert set().union(*records) == committed_record_keys("transfer")
    models = [r["model"] for r in records]
    assert len(models) == 8 and {"static, fine-tuned", "BasisNet, upcycled (no early exit)", "static, from scratch",
                                 "BasisNet, from scratch + early exit (val max-drop 0.3)"} <= set(models)
    # The class split: sources on the first half of the classes, the target on the rest, as linked trees.
    assert sorted(p.name for p in (out / "data" / "source" / "train").iterdir()) == list(COLOURS[:2])
    target_train = out / "data" / "target" / "train"
    assert sorted(p.name for p in target_train.iterdir()) == list(COLOURS[2:])
    assert all(len(list((target_train / c).iterdir())) == 10 + 2 for c in COLOURS[2:])  # train + val per class
    # The pretrained runs start from the sources; the scratch runs from nothing.
    init = json.loads(RunDir(out / "basisnet_upcycled").init.read_text())
    assert {part: v["source"] for part, v in init.items()} == {
        "specialist": str(out / "source_static"), "lightweight": str(out / "source_lightweight")}
    assert json.loads(RunDir(out / "static_finetuned").init.read_text())["model"]["source"] == str(out / "source_static")
    assert not RunDir(out / "basisnet_scratch").init.exists()
    meta = json.loads(results.with_name("transfer_meta.json").read_text())
    assert meta["source_classes"] == list(COLOURS[:2]) and meta["target_train_per_class"] == 10
    assert results.with_suffix(".png").stat().st_size > 0
    # each record is its run's test top-1 at its last exit; the targets are differences of those, the verdict
    # follows from the first
    by_model = {r["model"]: r for r in records}
    for label, run in (("static, fine-tuned", "static_finetuned"), ("static, from scratch", "static_scratch"),
                       ("BasisNet, upcycled (no early exit)", "basisnet_upcycled"),
                       ("BasisNet, from scratch (no early exit)", "basisnet_scratch")):
        assert by_model[label]["top1"] == round(exit_accuracy(exit_logits(out / run, "test"))[-1], 2)
        assert by_model[label]["run"] == run and by_model[label]["epochs"] == 1
    t = meta["targets"]
    for key, (a, b) in {"upcycled_minus_finetuned_pt": ("BasisNet, upcycled (no early exit)", "static, fine-tuned"),
                        "finetuned_minus_scratch_pt": ("static, fine-tuned", "static, from scratch"),
                        "upcycled_minus_scratch_pt": ("BasisNet, upcycled (no early exit)",
                                                      "BasisNet, from scratch (no early exit)")}.items():
        assert t[key] == pytest.approx(by_model[a]["top1"] - by_model[b]["top1"], abs=0.011)
    verdict = "met" if t["upcycled_minus_finetuned_pt"] >= 1.0 else "missed"
    assert format_transfer_targets(meta).splitlines()[0] == (
        f"BasisNet upcycled - static fine-tuned: {t['upcycled_minus_finetuned_pt']:+.2f} pt (target >= +1 pt: {verdict})")
    for other, verdict in ((1.0, "met"), (0.99, "missed")):
        shifted = {**meta, "targets": {**t, "upcycled_minus_finetuned_pt": other}}
        assert format_transfer_targets(shifted).splitlines()[0].endswith(f"(target >= +1 pt: {verdict})")
    table = format_records_table(records).splitlines()
    assert len(table) == 2 + len(records)
    for line, r in zip(table[2:], records):
        assert line.startswith(f"| {r['model']} | {r['top1']:.2f} | {r['madds']:.2f} | {r['params'] / 1e6:.2f}M |")
    # A second run reuses every run: nothing trained, no weights rewritten, no file added.
    files = {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    again = run_study("transfer", data=tree, output=out, results=results, overrides=TINY, **plan)
    printed = capsys.readouterr().out
    assert printed.count("already trained, reusing") == 6 and "[bench] training" not in printed and again == records
    assert {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == files
    with pytest.raises(ValueError, match="holds a class split made with other settings"):
        run_study("transfer", data=tree, output=out, results=results, overrides=TINY,
                  **{**plan, "per_class": 8})
