"""``make demo``: train a small BasisNet on the embedded SHAPES set, sweep thresholds, print the trade-off."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..configs import bundled_config
from ..evaluate import apply_threshold, exit_accuracy, select_threshold
from ..train import load_config
from ..workflow import exit_logits, run_exit_madds, sweep_run, train_run

DEMO_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


def run_demo(out: str | Path = "runs/demo", overrides: Sequence[str] = (), fresh: bool = True,
             max_drop: float = 0.5) -> dict[str, Any]:
    """Train, then report: each stage alone, a few thresholds, and the one picked on validation."""
    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    cfg = load_config(bundled_config("shapes_demo"), overrides)
    train_run(cfg, out)
    madds = run_exit_madds(out)
    sweep_run(out, "val")
    val, test = exit_logits(out, "val"), exit_logits(out, "test")
    light, full = exit_accuracy(test)
    threshold = select_threshold(val, madds, max_drop=max_drop)
    rows = [("lightweight only (exit 1)", light, madds[0], 1.0), ("specialist always (exit 2)", full, madds[1], 0.0)]
    for t in DEMO_THRESHOLDS:
        r = apply_threshold(test, madds, t)
        rows.append((f"early exit, threshold {t:.2f}", r["top1"], r["madds"], r["exit_fraction"]))
    picked = apply_threshold(test, madds, threshold)
    rows.append((f"picked on val (max drop {max_drop} pt): {threshold:.2f}", picked["top1"], picked["madds"],
                 picked["exit_fraction"]))
    print(f"\nSHAPES test set ({len(test.targets)} images), BasisNet trained {cfg.train.epochs} epochs:")
    print(f"{'':<44}{'top-1 %':>9}{'MAdds (M)':>11}{'exit 1 %':>10}")
    for name, top1, m, frac in rows:
        print(f"{name:<44}{top1:>9.2f}{m:>11.2f}{100 * frac:>10.1f}")
    print(f"\nplot: {out / 'sweep_val.png'}   sweep: {out / 'sweep_val.csv'}   run: {out}")
    return {"rows": rows, "threshold": threshold, "run_dir": str(out)}
