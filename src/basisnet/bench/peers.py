"""The peer catalogue: the adaptive models the CIFAR-10 studies put side by side, each a bundled config.

``bench compare`` trains every peer; ``bench regime`` and ``bench distill`` study some of them in the same
runs folder, so a peer's run directory name is part of its entry (a run is reused by every study that
asks for the same config).
"""

from __future__ import annotations

from argparse import Namespace
from typing import NamedTuple

from .study import Option, quick_overrides

__all__ = ["BASISNET", "CONDCONV", "MSDNET", "PEERS", "Peer", "RANET", "RUNS", "STATIC", "peer_options",
           "peer_overrides", "peer_suffix", "peers"]


class Peer(NamedTuple):
    label: str  # the records' model name
    config: str  # bundled config name
    run: str  # run directory name under the study's runs folder
    overrides: tuple[str, ...] = ()


BASISNET = "BasisNet"
STATIC = "MobileNetV3-Small x0.5 (static)"
CONDCONV = "CondConv-MobileNetV3-Small x0.5"
MSDNET = "MSDNet"
RANET = "RANet"
PEERS: tuple[Peer, ...] = (  # BasisNet first: the tables and plots lead with it
    Peer(BASISNET, "cifar10_basisnet", "basisnet"),
    Peer(STATIC, "cifar10_static", "static_w0.5", ("model.kwargs.width=0.5",)),
    Peer(CONDCONV, "cifar10_condconv", "condconv"),
    Peer(MSDNET, "cifar10_msdnet", "msdnet"),
    Peer(RANET, "cifar10_ranet", "ranet"),
)


def peers(*labels: str) -> tuple[Peer, ...]:
    """The peers of these labels, in the catalogue's order."""
    return tuple(peer for peer in PEERS if peer.label in labels)


# The studies over the peers (compare, regime, distill) share one runs folder: one set of the options below
# names one folder, so each study reuses the runs the others trained with the same settings.
RUNS = "bench_cifar10"


def peer_options(models: str) -> tuple[Option, ...]:
    """The options the peer studies share; ``models`` says what ``--models`` means for the study."""
    return (
        Option("--quick", "the same code on 4,000 images for 2 epochs", action="store_true", default=False),
        Option("--subset", "train on N images of the training split (default: all; runs go to "
               "runs/bench_cifar10_n<N>)", type=int),
        Option("--teacher", "every run distils from this trained run directory (train.kd_teacher; runs go to a "
               "folder ending in _kd)"),
        Option("--models", models, nargs="+"),
    )


def peer_suffix(opts: Namespace) -> str:
    """The runs folder's and results' suffix of the peer studies' options."""
    return ("_quick" if opts.quick else "") + (f"_n{opts.subset}" if opts.subset else "") + \
        ("_kd" if opts.teacher else "")


def peer_overrides(opts: Namespace) -> tuple[str, ...]:
    """What every run of a peer study gets on top of its peer's config: the sizing, then the options."""
    return (*quick_overrides(opts.quick), *opts.overrides, *([f"data.subset={opts.subset}"] if opts.subset else []),
            *([f"train.kd_teacher={opts.teacher}"] if opts.teacher else []))
