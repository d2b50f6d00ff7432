"""Training subpackage: config, optim, EMA, losses, checkpoints and the loop (CPU, tiny, fast)."""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path
from typing import Callable

import pytest
import safetensors.torch
import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from basisnet.data import BatchLoader, EvalTransform, ImageTensorDataset, TrainAugment
from basisnet.train import (
    CheckpointError, CheckpointMismatchError, ConfigError, ModelEma, MultiExitLoss, NonFiniteLossError, RunConfig,
    TrainConfig, TrainData, TrainingTask, atomic_write_bytes, build_parts, check_train_options, config_help,
    config_to_dict, create_optimizer, create_scheduler, fit, init_distributed_device,
    kd_loss, load_config, load_run_model, load_state, load_weights, param_groups, save_config, save_weights,
)
from basisnet.train import checkpoint as checkpoint_module
from helpers import PlainDataset, ToyNet

# ------------------------------------------------------------------ helpers


train_tf = TrainAugment(crop_size=8, padding=1, mean=(0.5,) * 3, std=(0.25,) * 3)
eval_tf = EvalTransform(mean=(0.5,) * 3, std=(0.25,) * 3)


def make_data(plain: bool = False, n: int = 64, batch: int = 16) -> tuple[BatchLoader, BatchLoader]:
    gen = torch.Generator().manual_seed(123)
    labels = torch.randint(0, 3, (n,), generator=gen)
    images = torch.randint(0, 256, (n, 3, 8, 8), generator=gen, dtype=torch.uint8)
    images[:, 0] = (labels * 100).to(torch.uint8)[:, None, None]  # learnable signal
    train = ImageTensorDataset(images, labels, ["a", "b", "c"])
    val = train.subset(range(32))
    if plain:
        train, val = PlainDataset(train), PlainDataset(val)
    return BatchLoader(train, batch, shuffle=True, seed=1), BatchLoader(val, 32, shuffle=False)


def tiny_cfg(*overrides: str) -> RunConfig:
    return load_config(None, ["train.epochs=2", "train.lr=0.05", "train.warmup_epochs=0.5", "train.log_interval=1",
                              "data.batch_size=16", *overrides])


def run(run_dir: Path, cfg: RunConfig, make_model: Callable[[], nn.Module] = ToyNet, resume: bool = False,
        plain: bool = False, **kw) -> dict:
    torch.manual_seed(0)  # same initial weights in every run
    model = make_model()
    train, val = make_data(plain)
    return fit(model, TrainData(train, val, train_tf, eval_tf), cfg, run_dir, resume=resume, progress=False, **kw)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ config


def test_unknown_key_suggests(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.lrr'.*did you mean 'train\.lr'"):
        load_config(None, ["train.lrr=0.1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'trian'.*did you mean 'train'"):
        load_config(bad)


def test_types_checked() -> None:
    with pytest.raises(ConfigError, match=r"'train\.epochs' must be int, got 1\.5"):
        load_config(None, ["train.epochs=1.5"])
    with pytest.raises(ConfigError, match=r"'data\.flip' must be bool"):
        load_config(None, ["data.flip=3"])
    with pytest.raises(ConfigError, match=r"'train\.optimizer' must be 'sgd' \| 'rmsprop' \| 'adamw'"):
        load_config(None, ["train.optimizer=adam"])
    with pytest.raises(ConfigError, match="must look like"):
        load_config(None, ["train.lr"])
    cfg = load_config(None, ["train.lr=1", "data.val_size=500", "data.mean=[0, 0.5, 1]"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.val_size == 500 and isinstance(cfg.data.val_size, int)  # a count stays a count
    assert cfg.data.mean == (0.0, 0.5, 1.0)


@pytest.mark.parametrize("override, key", [
    ("train.lr=0", "train.lr"), ("train.epochs=0", "train.epochs"), ("train.ema_decay=1.0", "train.ema_decay"),
    ("train.label_smoothing=1", "train.label_smoothing"), ("train.weight_decay=-1e-4", "train.weight_decay"),
    ("data.batch_size=0", "data.batch_size"), ("data.val_size=1.5", "data.val_size"), ("data.std=[1, 0, 1]", "data.std"),
    ("train.kd_weight=2", "train.kd_weight"), ("train.self_distill=1.5", "train.self_distill"),
    ("train.self_distill_temperature=0", "train.self_distill_temperature"), ("train.min_lr=1", "train.min_lr"),
])
def test_out_of_range(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}' must be"):
        load_config(None, [override])


def test_yaml_overrides_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  name: toy\n  kwargs: {width: 4, num_bases: 4}\ntrain:\n  lr: 0.2\n")
    cfg = load_config(path, ["model.kwargs.num_bases=8", "train.kd_teacher=/runs/t", "data.source=/x"])
    assert cfg.model.kwargs == {"width": 4, "num_bases": 8}
    assert (cfg.train.lr, cfg.train.kd_teacher, cfg.data.source) == (0.2, "/runs/t", "/x")
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg
    assert config_to_dict(cfg)["data"]["mean"] == list(cfg.data.mean)
    keys = [key for key, _, help in config_help() if help]
    assert len(keys) == len(config_help()) and "train.kd_temperature" in keys  # every key documented


# ------------------------------------------------------------------ optim, EMA, losses


def test_param_groups_skip_bn_bias_and_marked() -> None:
    model = ToyNet()
    model.no_weight_decay = lambda: {"head0.weight"}
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {names[id(p)] for p in decay["params"]} == {"stem.0.weight", "body.0.weight", "head1.1.weight"}
    assert {"stem.1.weight", "stem.1.bias", "stem.0.bias", "head0.weight"} <= {names[id(p)] for p in no_decay["params"]}


def test_scheduler_warmup_then_cosine() -> None:
    cfg = load_config(None, ["train.epochs=10", "train.warmup_epochs=2", "train.lr=1", "train.min_lr=0.1"]).train
    opt = create_optimizer(nn.Linear(2, 2), cfg)
    sched = create_scheduler(opt, cfg, steps_per_epoch=5)  # 50 steps, 10 of warm-up
    lrs = []
    for _ in range(50):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[4] == pytest.approx(0.5) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[30] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert lrs[49] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 39 / 40)))
    resumed = create_scheduler(create_optimizer(nn.Linear(2, 2), cfg), cfg, 5)
    resumed.load_state_dict(sched.state_dict())
    assert resumed.get_last_lr() == sched.get_last_lr()


def test_ema_update_math() -> None:
    model = nn.BatchNorm1d(2)
    ema = ModelEma(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.running_mean.fill_(5.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full((2,), 0.9 * 1.0 + 0.1 * 2.0))
    assert torch.equal(ema.module.running_mean, model.running_mean)  # buffers copied, not averaged
    assert not ema.module.weight.requires_grad and not ema.module.training


def test_kd_and_multi_exit_loss() -> None:
    logits = torch.randn(4, 5)
    assert kd_loss(logits, logits.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    teacher = torch.randn(4, 5)
    p, q = (teacher / 4).softmax(-1), (logits / 4).softmax(-1)  # KL(teacher || student) at T=4, times T^2
    expected = 16 * (p * (p.log() - q.log())).sum(-1).mean()
    assert kd_loss(logits, teacher, 4.0).item() == pytest.approx(expected.item(), rel=1e-5)
    target = torch.tensor([0, 1, 2, 3])
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    ce = nn.functional.cross_entropy
    assert MultiExitLoss(0.5)([a, b], target).item() == pytest.approx((ce(b, target) + 0.5 * ce(a, target)).item())


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_self_distillation_teaches_earlier_exits_the_detached_last_exit(weight: float) -> None:
    """``train.self_distill`` reaches the loss the loop trains with, and its gradients are the textbook ones:
    an earlier exit is pulled towards the last exit's softened prediction (d KD / d z = T (softmax(z/T) -
    softmax(teacher/T)) / B), the last exit only by its labels. Fails when self-distillation is switched off."""
    t, batch = 3.0, 6
    parts = build_parts(ToyNet(), TrainConfig(self_distill=weight, self_distill_temperature=t, aux_weight=0.5), 1)
    gen = torch.Generator().manual_seed(0)
    early, last = (torch.randn(batch, 5, generator=gen, requires_grad=True) for _ in range(2))
    target = torch.arange(batch) % 5
    parts.task.loss([early, last], target, torch.empty(batch, 3, 8, 8)).backward()
    soft, hard = nn.functional.softmax, nn.functional.one_hot(target, 5).float()
    from_labels = (soft(early, -1) - hard) / batch
    from_last = t * (soft(early / t, -1) - soft(last / t, -1)) / batch
    torch.testing.assert_close(early.grad, 0.5 * ((1 - weight) * from_labels + weight * from_last))
    torch.testing.assert_close(last.grad, (soft(last, -1) - hard) / batch)


def test_gradient_equilibrium_reaches_models_with_a_shared_trunk_and_refuses_others() -> None:
    from basisnet.models import create_model, model_class

    msdnet = create_model("msdnet", num_classes=5, num_blocks=2, base=1, step=1, num_channels=8, growth_rate=4)
    assert not msdnet.gradient_equilibrium
    build_parts(msdnet, TrainConfig(gradient_equilibrium=True), 1)
    assert msdnet.gradient_equilibrium
    message = "train.gradient_equilibrium: {} has no trunk shared by its exits; it applies to msdnet and ranet"
    with pytest.raises(ConfigError, match=message.format("ToyNet")):
        build_parts(ToyNet(), TrainConfig(gradient_equilibrium=True), 1)
    # Before any model is built: the registered class is enough.
    with pytest.raises(ConfigError, match=message.format("BasisNet")):
        check_train_options(model_class("basisnet"), TrainConfig(gradient_equilibrium=True))
    check_train_options(model_class("ranet"), TrainConfig(gradient_equilibrium=True))
    check_train_options(model_class("basisnet"), TrainConfig())


def test_the_training_task_sums_every_term_the_config_names() -> None:
    """Each term of the loss the loop trains with shows in the gradients of the exits: the joint loss weights
    the earlier exit by ``aux_weight`` and smooths the labels; a teacher pulls the final exit (only) towards
    its softened prediction with ``kd_weight`` and scales the rest by ``1 - kd_weight``. Fails when a term is
    dropped, misweighted or applied to the wrong exit."""
    batch, classes, t, w, aux, eps = 6, 3, 2.0, 0.25, 0.5, 0.1
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, 8, 8, generator=gen)
    torch.manual_seed(1)
    teacher = ToyNet(classes).train()  # the task puts it in eval mode: no dropout in its soft labels
    early, last = (torch.randn(batch, classes, generator=gen, requires_grad=True) for _ in range(2))
    target = torch.arange(batch) % classes
    tc = TrainConfig(aux_weight=aux, label_smoothing=eps, kd_weight=w, kd_temperature=t, kd_teacher="teacher-run")
    task = TrainingTask.from_config(tc, teacher)
    assert not teacher.training
    task.loss([early, last], target, images).backward()
    soft = nn.functional.softmax
    smoothed = (1 - eps) * nn.functional.one_hot(target, classes).float() + eps / classes
    with torch.no_grad():
        taught = teacher(images)[-1]
    from_labels = lambda z: (soft(z, -1) - smoothed) / batch  # noqa: E731
    from_teacher = t * (soft(last / t, -1) - soft(taught / t, -1)) / batch
    torch.testing.assert_close(early.grad, (1 - w) * aux * from_labels(early))
    torch.testing.assert_close(last.grad, (1 - w) * from_labels(last) + w * from_teacher)
    # No teacher named: no distillation term, and a named teacher must be given.
    assert TrainingTask.from_config(TrainConfig(kd_weight=w)).teacher is None
    with pytest.raises(ValueError, match="train.kd_teacher is 'teacher-run' but fit\\(\\) got no teacher model"):
        TrainingTask.from_config(tc)


# ------------------------------------------------------------------ checkpoints


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.safetensors"
    save_weights(ToyNet(), path)
    before = sha(path)

    def fail(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.os, "fsync", fail)  # the data is half-way to disk when it fails
    with pytest.raises(OSError, match="disk full"):
        save_weights(ToyNet(width=8), path)
    assert sha(path) == before and [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]
    load_weights(ToyNet(), path)


def test_load_weights_mismatch_lists_differences(tmp_path: Path) -> None:
    save_weights(ToyNet(classes=3), tmp_path / "w.safetensors")
    other = ToyNet(classes=5)
    other.extra = nn.Linear(1, 1)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights(other, tmp_path / "w.safetensors")
    msg = str(err.value)
    assert "missing in checkpoint (2)" in msg and "extra.weight" in msg
    assert "head0.weight: checkpoint (3, 4) vs model (5, 4)" in msg and "head1.1.bias: checkpoint (3,) vs model (5,)" in msg
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())  # untouched
    atomic_write_bytes(tmp_path / "junk.safetensors", b"\x10\x00not a header")
    with pytest.raises(CheckpointError, match="cannot read weights file .*junk"):
        load_weights(other, tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(other, tmp_path / "missing.safetensors")


def test_tied_weights_round_trip(tmp_path: Path) -> None:
    model = ToyNet()
    model.tied = model.head0  # the same parameters under two names
    save_weights(model, tmp_path / "t.safetensors", {"model": '{"name": "toy", "kwargs": {"classes": 3}}'})
    fresh = ToyNet()
    fresh.tied = fresh.head0
    load_weights(fresh, tmp_path / "t.safetensors")
    assert torch.equal(fresh.tied.weight, model.head0.weight) and fresh.tied.weight is fresh.head0.weight


# ------------------------------------------------------------------ fit


def test_fit_writes_run_directory(tmp_path: Path) -> None:
    teacher = ToyNet().eval()
    cfg = tiny_cfg("train.ema_decay=0.5", "train.kd_teacher=teacher-run", "train.grad_clip=1.0",
                   "train.label_smoothing=0.1")
    result = run(tmp_path, cfg, teacher=teacher)
    assert {p.name for p in tmp_path.iterdir()} == {
        "config.yaml", "summary.csv", "last.state.pt", "last.safetensors", "best.safetensors"}
    assert load_config(tmp_path / "config.yaml") == cfg
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == ["epoch", "lr", "train_loss", "val_top1_exit1", "val_top1_exit2", "seconds", "images_per_s"]
    assert result["global_step"] == 8
    # the summary holds what fit returns: the best epoch is the one with the best last-exit accuracy
    last_exit = [float(r["val_top1_exit2"]) for r in rows]
    assert result["best_top1"] == pytest.approx(max(last_exit), abs=1e-3)
    assert last_exit[result["best_epoch"] - 1] == pytest.approx(result["best_top1"], abs=1e-3)
    assert result["last_top1"] == pytest.approx([float(rows[-1]["val_top1_exit1"]), last_exit[-1]], abs=1e-3)
    state = load_state(tmp_path / "last.state.pt")  # weights_only=True
    assert state["loop"]["epoch"] == 2 and state["ema"] is not None
    model = load_run_model(tmp_path, lambda name, **kw: ToyNet(**kw))
    assert not model.training
    with pytest.raises(FileExistsError, match="resume=True"):
        run(tmp_path, cfg, teacher=teacher)


def _steps(tmp_path: Path, *overrides: str, teacher: nn.Module | None = None) -> list[list[Tensor]]:
    """The gradients the optimizer steps with, at every step of a tiny fit (the same initial weights and
    batches in every call)."""
    seen: list[list[Tensor]] = []

    def before_step(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        seen.append([p.grad.clone() for group in optimizer.param_groups for p in group["params"]
                     if p.grad is not None])

    handle = register_optimizer_step_pre_hook(before_step)
    try:
        cfg = tiny_cfg(*overrides, *(["train.kd_teacher=teacher-run"] if teacher is not None else []))
        run(tmp_path / str(len(list(tmp_path.iterdir()))), cfg, teacher=teacher)
    finally:
        handle.remove()
    return seen


def _norm(grads: list[Tensor]) -> float:
    return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()


def test_label_smoothing_kd_teacher_and_grad_clip_reach_the_step(tmp_path: Path) -> None:
    """Each option changes the gradients the optimizer steps with: same weights, same first batch, another
    loss (label smoothing, distillation) or a clipped norm. Fails when fit ignores any of them."""
    plain = _steps(tmp_path)
    assert len(plain) == 8
    first = plain[0]
    for overrides in (["train.label_smoothing=0.3"], ["train.kd_weight=0.5"]):
        teacher = None
        if overrides == ["train.kd_weight=0.5"]:
            torch.manual_seed(7)  # another network than the student: its soft labels are not the student's
            teacher = ToyNet()
            calls: list[Tensor] = []
            teacher.register_forward_hook(lambda mod, args, out: calls.append(args[0]))
        got = _steps(tmp_path, *overrides, teacher=teacher)[0]
        assert max((a - b).abs().max().item() for a, b in zip(got, first)) > 1e-4, overrides
        if teacher is not None:  # the teacher saw every training batch, in eval mode
            assert len(calls) == 8 and not teacher.training
    clip = 0.1 * min(_norm(g) for g in plain)  # below every unclipped norm
    clipped = _steps(tmp_path, f"train.grad_clip={clip}")
    assert len(clipped) == 8 and all(_norm(g) <= clip * (1 + 1e-4) for g in clipped)
    assert _norm(clipped[0]) == pytest.approx(clip, rel=1e-3)  # scaled down to the bound, not zeroed
    torch.testing.assert_close(clipped[0], [g * (clip / _norm(first)) for g in first], rtol=1e-3, atol=1e-7)


def test_label_smoothing_is_the_criterion_of_every_exit() -> None:
    parts = build_parts(ToyNet(), TrainConfig(label_smoothing=0.2, aux_weight=0.5), 1)
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 3, generator=gen), torch.randn(6, 3, generator=gen)
    target = torch.arange(6) % 3
    ce = nn.functional.cross_entropy
    expected = ce(b, target, label_smoothing=0.2) + 0.5 * ce(a, target, label_smoothing=0.2)
    x = torch.empty(6, 3, 8, 8)
    torch.testing.assert_close(parts.task.loss([a, b], target, x), expected)
    assert (parts.task.loss([a, b], target, x) - (ce(b, target) + 0.5 * ce(a, target))).abs() > 1e-3


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    seen = {}

    def make_model() -> ToyNet:
        model = ToyNet(nan_at=6)  # epoch 2, step 2 (4 steps per epoch)
        model.on_nan = lambda: seen.update({n: sha(tmp_path / n) for n in ("last.state.pt", "last.safetensors")})
        return model

    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 2 \(global step 6\).*last\.safetensors") as err:
        run(tmp_path, tiny_cfg(), make_model)
    assert (err.value.epoch, err.value.step, err.value.checkpoint) == (2, 2, tmp_path / "last.safetensors")
    assert {n: sha(tmp_path / n) for n in seen} == seen  # nothing written after the NaN
    assert load_state(tmp_path / "last.state.pt")["loop"]["epoch"] == 1
    load_weights(ToyNet(), tmp_path / "last.safetensors")


def test_infinite_gradient_stops(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient norm \((inf|nan)\) at epoch 1, step 3") as err:
        run(tmp_path, tiny_cfg("train.grad_clip=1"), lambda: ToyNet(inf_grad_at=3))
    assert err.value.checkpoint is None and not (tmp_path / "last.state.pt").exists()


@pytest.mark.parametrize("plain", [False, True], ids=["tensor-dataset", "torch-dataloader"])
@pytest.mark.parametrize("crash_at, resume_batch", [(5, 0), (7, 2)], ids=["epoch-end", "mid-epoch"])
def test_resume_is_bitwise_identical(tmp_path: Path, plain: bool, crash_at: int, resume_batch: int) -> None:
    cfg = tiny_cfg("train.ema_decay=0.5", "train.checkpoint_every_steps=3", "train.optimizer=adamw",
                   "train.weight_decay=0.01")
    reference = run(tmp_path / "a", cfg, plain=plain)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", cfg, lambda: ToyNet(crash_at=crash_at), plain=plain)  # killed in epoch 2
    assert load_state(tmp_path / "b" / "last.state.pt")["loop"]["batch"] == resume_batch
    with pytest.raises(ConfigError, match="train.lr: 0.05 -> 0.1"):
        run(tmp_path / "b", tiny_cfg("train.lr=0.1"), resume=True)
    resumed = run(tmp_path / "b", cfg, resume=True, plain=plain)
    a, b = load_state(tmp_path / "a" / "last.state.pt"), load_state(tmp_path / "b" / "last.state.pt")
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    wa, wb = (safetensors.torch.load_file(tmp_path / d / "last.safetensors") for d in "ab")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    keep = ("epoch", "lr", "train_loss", "val_top1_exit1", "val_top1_exit2")
    assert [{k: r[k] for k in keep} for r in resumed["history"]] == [{k: r[k] for k in keep} for r in reference["history"]]


def test_a_run_logged_with_exits_counted_from_0_resumes_and_reads_counted_from_1(tmp_path: Path) -> None:
    """Runs logged before exits were counted from 1 (val_top1_exit0 ...) resume into one numbering: the
    summary a resume writes has only val_top1_exit1/2 columns, the old epoch's values under the new names."""
    from basisnet.train import read_summary
    from basisnet.train.checkpoint import save_state
    from basisnet.train.history import renumbered

    cfg = tiny_cfg()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, cfg, lambda: ToyNet(crash_at=5))  # epoch 1 finished and logged
    state = load_state(tmp_path / "last.state.pt")
    new_row = dict(state["loop"]["history"][0])
    old_names = {"val_top1_exit1": "val_top1_exit0", "val_top1_exit2": "val_top1_exit1"}
    old_row = {old_names.get(k, k): v for k, v in new_row.items()}
    assert {"val_top1_exit0", "val_top1_exit1"} <= set(old_row) and "val_top1_exit2" not in old_row
    state["loop"]["history"] = [old_row]
    save_state(state, tmp_path / "last.state.pt")
    assert renumbered(old_row) == new_row
    result = run(tmp_path, cfg, resume=True)
    header = (tmp_path / "summary.csv").read_text().splitlines()[0].split(",")
    assert [h for h in header if h.startswith("val_top1")] == ["val_top1_exit1", "val_top1_exit2"]
    rows = read_summary(tmp_path / "summary.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and len(result["last_top1"]) == 2
    assert [sorted(k for k in r if k.startswith("val_top1")) for r in result["history"]] == \
        [["val_top1_exit1", "val_top1_exit2"]] * 2  # the history fit returns is renumbered too
    assert float(rows[0]["val_top1_exit2"]) == pytest.approx(new_row["val_top1_exit2"], abs=1e-3)


def test_init_distributed_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
        monkeypatch.delenv(var, raising=False)
    info = init_distributed_device("cpu")
    assert (info.rank, info.world_size, info.distributed, info.device.type) == (0, 1, False, "cpu")


@pytest.mark.slow
def test_compiled_training_forward_matches_eager(tmp_path) -> None:
    """train.compile runs the training forward through torch.compile (aot_eager: capture and autograd
    tracing without code generation) across BasisNet's static-phase boundary, and lands where eager does."""
    from basisnet.data import BatchLoader, EvalTransform, ImageTensorDataset, TrainAugment
    from basisnet.models import create_model

    data = ImageTensorDataset(torch.randint(0, 255, (16, 3, 16, 16), dtype=torch.uint8), torch.arange(16) % 2,
                              ["a", "b"])
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    weights = []
    for backend in ("false", "aot_eager"):
        torch.manual_seed(0)
        model = create_model("basisnet", num_classes=2, resolution=16, drop_strides=2, specialist="mobilenetv3_small",
                             specialist_width=0.35, lightweight_width=0.35, num_bases=2)
        cfg = load_config(None, ["train.epochs=2", "train.warmup_epochs=0", "data.image_size=16",
                                 "data.batch_size=8", f"train.compile={backend}", "train.channels_last=true"])
        fit(model, TrainData(BatchLoader(data, 8, shuffle=True), BatchLoader(data, 8, shuffle=False), TrainAugment(16, 0),
                             EvalTransform()), cfg, tmp_path / backend, progress=False)
        weights.append(model.state_dict())
        graphs = counters["stats"]["unique_graphs"]
        assert (graphs > 0) == (backend != "false"), (backend, graphs)  # compiled exactly when asked
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_an_atomic_write_has_the_mode_of_any_new_file(tmp_path: Path) -> None:
    """Checkpoints land beside config.yaml and summary.csv with the same permissions (not mkstemp's 0600)."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_bytes(tmp_path / "last.safetensors", b"x")
    assert (tmp_path / "last.safetensors").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_resuming_a_finished_run_says_it_is_finished(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = tiny_cfg("train.epochs=1", "train.warmup_epochs=0")
    first = run(tmp_path, cfg)
    with caplog.at_level("INFO", logger="basisnet.train.loop"):
        again = run(tmp_path, cfg, resume=True)
    assert "has finished its 1 epoch(s): nothing left to train" in caplog.text and "resuming " not in caplog.text
    assert again["global_step"] == first["global_step"]  # and it trained no further
