"""Evaluation protocols on hand-built cached logits (no training, CPU, tiny)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from basisnet.evaluate.early_exit import apply_threshold, select_threshold, threshold_sweep
from basisnet.evaluate.exits import ExitLogits, collect_exit_logits, exit_accuracy
from basisnet.evaluate.plots import model_series, plot_models, plot_tradeoff
from basisnet.evaluate.protocols import anytime, budgeted_batch, exit_prior, fit_temperatures


def _random_exit_logits(num_exits: int, num: int, classes: int = 10, seed: int = 0) -> ExitLogits:
    """Later exits are sharper and more often right, like a trained multi-exit net."""
    gen = torch.Generator().manual_seed(seed)
    targets = torch.randint(classes, (num,), generator=gen)
    signal = nn.functional.one_hot(targets, classes).float()
    logits = torch.stack(
        [torch.randn(num, classes, generator=gen) * 2 + signal * (1 + 1.5 * k) for k in range(num_exits)]
    )
    return ExitLogits(logits=logits, targets=targets)


def _constructed_case() -> ExitLogits:
    """2 exits, 4 samples. Exit-0 confidences 0.95, 0.85, 0.75, 0.65 (first two right, last two
    wrong); exit 1 is always right. With exit_madds [1, 3]:
    t=0 -> (50%, 1), t=0.7 -> (75%, 1.5), t=0.8 -> (100%, 2), t=0.9 -> (100%, 2.5), t=1 -> (100%, 3)."""
    conf0 = torch.tensor([0.95, 0.85, 0.75, 0.65])
    margin = torch.log(conf0 / (1 - conf0))
    exit0 = torch.stack([margin, torch.zeros(4)], dim=1)  # predicts class 0 with confidence conf0
    targets = torch.tensor([0, 0, 1, 1])
    exit1 = nn.functional.one_hot(targets, 2).float() * 5
    return ExitLogits(logits=torch.stack([exit0, exit1]), targets=targets)


GRID = [0.0, 0.7, 0.8, 0.9, 1.0]
MADDS2 = [1.0, 3.0]


def test_sweep_constructed_rows() -> None:
    rows = threshold_sweep(_constructed_case(), MADDS2, GRID)
    assert [r["top1"] for r in rows] == pytest.approx([50, 75, 100, 100, 100])
    assert [r["madds"] for r in rows] == pytest.approx([1, 1.5, 2, 2.5, 3])
    assert [r["exit_fraction"] for r in rows] == pytest.approx([1, 0.75, 0.5, 0.25, 0])


def test_sweep_extremes_and_monotone_cost() -> None:
    data = _random_exit_logits(3, 500)
    madds = [10.0, 25.0, 60.0]
    acc = exit_accuracy(data)
    first = apply_threshold(data, madds, 0.0)
    assert first["fractions"] == pytest.approx([1, 0, 0])
    assert first["top1"] == pytest.approx(acc[0]) and first["madds"] == pytest.approx(madds[0])
    unreachable = data.logits.softmax(2).amax(2)[:2].max().item() + 1e-6
    last = apply_threshold(data, madds, min(unreachable, 1.0))
    assert last["fractions"] == pytest.approx([0, 0, 1]) and last["exit_fraction"] == 0
    assert last["top1"] == pytest.approx(acc[-1]) and last["madds"] == pytest.approx(madds[-1])
    costs = [r["madds"] for r in threshold_sweep(data, madds)]
    assert all(a <= b + 1e-9 for a, b in zip(costs, costs[1:]))


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan])
def test_invalid_threshold_raises(bad: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        apply_threshold(_constructed_case(), MADDS2, bad)
    with pytest.raises(ValueError, match="threshold"):
        threshold_sweep(_constructed_case(), MADDS2, [0.5, bad])


def test_select_threshold_target_madds() -> None:
    data = _constructed_case()
    assert select_threshold(data, MADDS2, target_madds=2.2, thresholds=GRID) == 0.8
    assert select_threshold(data, MADDS2, target_madds=1.6, thresholds=GRID) == 0.7
    assert select_threshold(data, MADDS2, target_madds=2.0, thresholds=GRID) == 0.8  # budget met exactly
    with pytest.raises(ValueError, match="minimum achievable average MAdds 1.0"):
        select_threshold(data, MADDS2, target_madds=0.5, thresholds=GRID)


def test_select_threshold_max_drop() -> None:
    data = _constructed_case()
    assert select_threshold(data, MADDS2, max_drop=0.0, thresholds=GRID) == 0.8
    assert select_threshold(data, MADDS2, max_drop=30.0, thresholds=GRID) == 0.7
    assert select_threshold(data, MADDS2, max_drop=50.0, thresholds=GRID) == 0.0
    for kwargs in ({}, {"target_madds": 2.0, "max_drop": 1.0}):
        with pytest.raises(ValueError, match="exactly one of target_madds or max_drop"):
            select_threshold(data, MADDS2, **kwargs)
    with pytest.raises(ValueError, match="--max-drop must be >= 0"):
        select_threshold(data, MADDS2, max_drop=-1.0)


def test_anytime_and_madds_length_check() -> None:
    data = _random_exit_logits(3, 50)
    rows = anytime(data, [1.0, 2.0, 3.0])
    assert [r["exit"] for r in rows] == [1, 2, 3]
    assert [r["top1"] for r in rows] == pytest.approx(exit_accuracy(data))
    with pytest.raises(ValueError, match="exit_madds has 2 entries"):
        anytime(data, [1.0, 2.0])


def _greedy_thresholds_oracle(conf: torch.Tensor, prior: torch.Tensor) -> list[float]:
    """Per-sample loop version of the MSDNet calibration, written independently for comparison."""
    num_exits, num = conf.shape
    exited = [False] * num
    thresholds = [1e8] * num_exits
    for k in range(num_exits - 1):
        want = math.floor(float(num * prior[k]))
        seen = 0
        for i in sorted(range(num), key=lambda j: -conf[k, j].item()):
            if not exited[i]:
                seen += 1
                if seen == want:
                    thresholds[k] = conf[k, i].item()
                    break
        exited = [e or conf[k, i].item() >= thresholds[k] for i, e in enumerate(exited)]
    thresholds[-1] = -1e8
    return thresholds


def test_budgeted_thresholds_match_loop_oracle_with_ties() -> None:
    data = _random_exit_logits(4, 300, seed=3)
    data.logits = data.logits.round()  # coarse logits -> many tied confidences
    conf = data.logits.softmax(2).amax(2)
    madds = [1.0, 2.0, 3.0, 4.0]
    for row in budgeted_batch(data, data, madds, qs=[0.05, 0.5, 1.0, 1.95]):
        oracle = _greedy_thresholds_oracle(conf, exit_prior(row["q"], 4))
        assert row["thresholds"] == pytest.approx(oracle, rel=0, abs=0)


def test_budgeted_fractions_follow_prior_on_validation() -> None:
    val = _random_exit_logits(3, 2000, seed=1)
    madds = [10.0, 25.0, 60.0]
    for row in budgeted_batch(val, val, madds, qs=[0.3, 1.0, 1.7]):
        prior = exit_prior(row["q"], 3).tolist()
        assert row["exit_fractions"] == pytest.approx(prior, abs=2 / 2000)
        # the cost is what the images pay where they leave
        assert row["madds"] == pytest.approx(sum(f * m for f, m in zip(row["exit_fractions"], madds)))


def test_budgeted_tiny_q_exits_first_and_matches_single_threshold() -> None:
    val, test = _random_exit_logits(2, 1000, seed=1), _random_exit_logits(2, 1000, seed=2)
    rows = budgeted_batch(val, test, MADDS2)
    assert len(rows) == 39 and rows[0]["q"] == pytest.approx(0.05)
    assert rows[0]["exit_fractions"][0] > 0.9
    assert [r["q"] for r in rows] == sorted(r["q"] for r in rows)
    costs = [r["madds"] for r in rows]  # a larger q sends more images on: the cost rises
    assert costs[-1] > costs[0] and all(a <= b + 1e-9 for a, b in zip(costs, costs[1:]))
    for row in rows:  # 2 exits: calibrated thresholds are one single early-exit threshold
        single = apply_threshold(test, MADDS2, row["thresholds"][0])
        assert row["top1"] == pytest.approx(single["top1"])
        assert row["exit_fractions"] == pytest.approx(single["fractions"])
        assert row["madds"] == pytest.approx(single["madds"])


def test_fit_temperatures_recovers_scale() -> None:
    gen = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 5, generator=gen) * 2
    targets = torch.multinomial(true_logits.softmax(1), 1, generator=gen).squeeze(1)
    temps = torch.tensor([2.0, 0.5])
    val = ExitLogits(logits=torch.stack([true_logits * t for t in temps]), targets=targets)
    assert fit_temperatures(val) == pytest.approx(temps, rel=0.15)
    rows = budgeted_batch(val, val, MADDS2, qs=[1.0], temperature=True)
    assert rows[0]["exit_fractions"] == pytest.approx([0.5, 0.5], abs=0.01)


def test_exit_logits_save_load_and_validation(tmp_path) -> None:
    data = _random_exit_logits(2, 20)
    data.save(tmp_path / "val.pt")
    loaded = ExitLogits.load(tmp_path / "val.pt")
    assert loaded.num_exits == 2
    assert torch.equal(loaded.logits, data.logits) and torch.equal(loaded.targets, data.targets)
    with pytest.raises(ValueError, match="targets must be"):
        ExitLogits(logits=torch.zeros(2, 5, 3), targets=torch.zeros(4, dtype=torch.long))


class _TwoExit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.a(x), self.a(x) + self.b(x)]


def test_collect_exit_logits_on_tiny_model() -> None:
    torch.manual_seed(0)
    model = _TwoExit().train()
    images = torch.randint(0, 256, (7, 4), dtype=torch.uint8)
    labels = torch.randint(3, (7,))
    batches = [(images[:4], labels[:4]), (images[4:], labels[4:])]
    out = collect_exit_logits(model, batches, transform=lambda x: x.float() / 255, progress=False)
    assert out.logits.shape == (2, 7, 3) and out.logits.dtype == torch.float32
    assert torch.equal(out.targets, labels) and model.training
    with torch.no_grad():
        expected = torch.stack(model(images.float() / 255))
    assert torch.allclose(out.logits, expected)
    assert not out.logits.is_inference()


def test_plot_tradeoff_writes_png(tmp_path) -> None:
    path = plot_tradeoff(
        {"early exit": [(3.0, 70.0), (1.0, 50.0), (2.0, 65.0)]},
        {"anytime": [(1.0, 50.0), (3.0, 72.0)]},
        tmp_path / "fig" / "tradeoff.png",
        title="synthetic",
    )
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 1000


def test_model_series_never_draws_an_invisible_line_nor_drops_a_model(tmp_path) -> None:
    curve, exits = [(4.0, 70.0), (2.0, 60.0)], [(2.0, 60.0), (4.0, 71.0)]
    assert model_series("multi", curve, exits) == (("multi (budgeted batch)", sorted(curve)),
                                                   ("multi (anytime exits)", exits))
    assert model_series("static", [(5.5, 80.0)] * 3, [(5.5, 80.0)]) == (None, ("static", [(5.5, 80.0)]))
    assert model_series("no exits given", [(5.5, 80.0)], []) == (None, ("no exits given", [(5.5, 80.0)]))
    assert model_series("empty", [], []) == (None, None)
    path = plot_models({"multi": (curve, exits), "static": ([(5.5, 80.0)], [])}, tmp_path / "m.png", title="t")
    assert path.read_bytes().startswith(b"\x89PNG")
