"""``basisnet <command>``: argument parsing only; each command calls one library function."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .models import create_model, list_models


def _madds(args: argparse.Namespace) -> int:
    from .evaluate import count_madds

    kwargs = dict(width=args.width, resolution=args.resolution, num_classes=args.num_classes)
    if args.bases:
        kwargs["num_bases"] = args.bases
    if args.drop_strides:
        kwargs["drop_strides"] = args.drop_strides
    model = create_model(args.model, **kwargs)
    forward = {}
    if getattr(model, "num_basis_layers", 0):
        # A bare basis network needs coefficients: one per-image set (counts synthesis per image).
        import torch

        forward["coeffs"] = torch.full((1, model.num_basis_layers, args.bases), 1.0 / args.bases)
    report = count_madds(model, depth=args.depth, **forward)
    if args.json:
        print(json.dumps({"model": args.model, **kwargs, **report.as_dict()}))
        return 0
    print(f"{args.model}  width {args.width}  {args.resolution}x{args.resolution}  {args.num_classes} classes"
          + (f"  N={args.bases}" if args.bases else ""))
    print(f"{'module':<40}{'MAdds (M)':>12}")
    for name, madds in report.per_module.items():
        print(f"{name:<40}{madds / 1e6:>12.3f}")
    if report.synthesis:
        print(f"{'kernel synthesis (in the above)':<40}{report.synthesis / 1e6:>12.3f}")
    print(f"{'total':<40}{report.madds / 1e6:>12.3f}")
    print(f"params: {report.params / 1e6:.3f}M")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="basisnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("madds", help="count multiply-adds and parameters of a model")
    p.add_argument("--model", required=True, choices=list_models())
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (default 1.0)")
    p.add_argument("--resolution", type=int, default=224, help="input side in pixels (default 224)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default 1000)")
    p.add_argument("--bases", type=int, default=0, help="N basis kernels per block conv (default 0: static)")
    p.add_argument("--drop-strides", type=int, default=0, help="early stride-2 steps run at stride 1 (default 0)")
    p.add_argument("--depth", type=int, default=2, help="breakdown depth in module names (default 2)")
    p.add_argument("--json", action="store_true", help="print one JSON object (madds and params per image)")
    p.set_defaults(func=_madds)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"basisnet {args.command}: error: {err}", file=sys.stderr)
        return 2
