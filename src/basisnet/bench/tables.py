"""The tables of ``docs/*.md``, rendered from ``benchmarks/results/*.json`` and from the config's own help.

A doc marks a generated table with a pair of comments, and everything between them is rewritten::

    <!-- table: compare_n10000 -->            the results file (its stem) and, after a slash, which table
    ...                                         of it: compare_n10000/seeds, speed/targets, config/train
    <!-- /table -->

so a figure in the docs is the figure in the committed records, printed by the same function the
benchmark prints it with. ``basisnet docs`` rewrites the regions; ``basisnet docs --check`` only names those
that differ (``tests/test_docs.py`` runs it over the committed docs and results). A results file's
*family* is its stem without the suffixes a study adds (``_n<N>`` for ``--subset``, ``_s<N>`` for an
ablation subset, ``_quick``), so ``compare_n4000.json`` renders with ``compare``'s tables.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ..configs import bundled_config, list_configs
from ..train import config_help, load_config
from .ablation import format_ablation_table
from .accuracy import format_targets
from .compare import format_compare_table, format_compare_targets, format_seed_table, format_verdicts
from .deploy import format_deploy_tables
from .deploy_forms import ratios
from .distill import format_distill_table
from .loader import format_loader_table
from .records import meta_path
from .regime import format_regime_table
from .runs import format_train_minutes
from .speed import format_speed_table, format_speed_targets
from .train_speed import format_train_speed_table
from .evaluations import format_records_table
from .transfer import format_transfer_targets

__all__ = ["TABLES", "markdown_table", "render_docs", "render_table", "render_text"]

REGION = re.compile(r"^(<!-- table: (?P<name>[^ ]+) -->\n)(?P<body>.*?)^(<!-- /table -->)$", re.S | re.M)
_OPEN, _CLOSE = re.compile(r"^<!-- table: ", re.M), re.compile(r"^<!-- /table -->$", re.M)  # markers start a line
_FAMILY = re.compile(r"(_n\d+|_s\d+)?(_quick)?$")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str) -> str:
    """A Markdown table; ``align`` has one letter per column: ``l`` left, ``r`` right, ``c`` centred."""
    rule = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule[a] for a in align) + "|"]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _block(text: str) -> str:
    """Fixed-width output as the command prints it, in a code block (trailing blanks dropped)."""
    return "```\n" + "\n".join(line.rstrip() for line in text.split("\n")) + "\n```"


def _deploy_forms_table(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """One row per exported form, runtime, batch and thread count, with the ratios its targets are read from."""
    variants = {"basis depthwise": "every block conv", "static depthwise": "static depthwise"}

    def row(r: dict[str, Any]) -> list[str]:
        q = ratios(r)
        onnx = r["runtime"] == "onnxruntime"
        specialist = r["specialist_ms"] if onnx else r["whole_ms"] - r["lightweight_ms"]
        return [r["workload"], variants.get(r["variant"], r["variant"]),
                f"ORT `--batch {r['form']}`" if onnx else "PyTorch eager", r["batch"], r["threads"],
                f"{r['lightweight_ms']:.2f}", f"{specialist:.2f}", f"{r['static_ms']:.2f}", f"{r['synthesis_floor_ms']:.2f}",
                f"{q['specialist / (static + synthesis)']:.2f}x" if onnx else "",
                f"{q['specialist / static']:.2f}x" if onnx else "", f"{q['whole / floor']:.2f}x"]

    header = ["workload", "basis convs", "runtime, form", "batch", "threads", "lightweight ms", "specialist ms",
              "static twin ms", "synthesis floor ms", "specialist / (static + floor)", "specialist / static",
              "whole / floor"]
    return markdown_table(header, map(row, records), "lllrrrrrrrrr")


def _deploy_forms_targets(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The targets of the bundled configs' variant (static depthwise convs), one row each, one column per workload."""
    cells: dict[str, dict[str, str]] = {}
    workloads: list[str] = []
    for t in meta["targets"]["static depthwise"]:
        what, where = t["target"].rsplit(" (", 1)
        workload, place = where.rstrip(")").split(", ", 1)
        workloads += [workload] if workload not in workloads else []
        verdict = "met" if t["met"] else f"missed by {t['ratio'] - t['limit']:.2f}"
        cells.setdefault(f"{what} ({place})", {})[workload] = f"{t['ratio']:.2f}x, {verdict}"
    return markdown_table(["target (1 thread)", *workloads],
                          ([name, *(row.get(w, "") for w in workloads)] for name, row in cells.items()),
                          "l" + "r" * len(workloads))


def _config_keys(section: str) -> str:
    """Every key of one config section: name, default and meaning, as ``basisnet train --list-keys`` prints them."""
    rows = [(f"`{key}`", f"`{default!s}`", text) for key, default, text in config_help() if key.startswith(section + ".")]
    if not rows:
        raise ValueError(f"no config section {section!r}")
    return markdown_table(["key", "default", "meaning"], rows, "lll")


def _bundled_configs() -> str:
    """The configs shipped in ``basisnet/configs``: model, data source, epochs and batch as resolved."""
    def row(name: str) -> list[str]:
        cfg = load_config(bundled_config(name))
        return [f"`{name}`", f"`{cfg.model.name}`", str(cfg.data.image_size), str(cfg.train.epochs),
                str(cfg.data.batch_size), cfg.data.loader]

    return markdown_table(["config", "model", "image size", "epochs", "global batch", "data.loader"],
                          map(row, list_configs()), "llrrrl")


Records = Any  # the JSON of a results file: a list of records, or one object (deploy.json)
Renderer = Callable[[Records, dict[str, Any]], str]

TABLES: dict[str, Renderer] = {  # "<family>" or "<family>/<kind>": (records, meta) -> the region's text
    "ablation": lambda records, meta: format_ablation_table(records),
    "cifar10": lambda records, meta: format_records_table(records),
    "cifar10/targets": lambda records, meta: _block(format_targets(meta)),
    "compare": lambda records, meta: format_compare_table(records),
    "compare/seeds": lambda records, meta: format_seed_table(meta["seed_spread"]),
    "compare/verdicts": lambda records, meta: _block(format_verdicts(meta["verdicts"])),
    "compare/targets": lambda records, meta: _block(format_compare_targets(meta) + "\n"
                                                    + format_train_minutes(meta["train_minutes"])),
    "deploy": lambda records, meta: _block(format_deploy_tables(records)),
    "deploy_forms": _deploy_forms_table,
    "deploy_forms/targets": _deploy_forms_targets,
    "distill": lambda records, meta: format_distill_table(records),
    "loader": lambda records, meta: format_loader_table(records),
    "regime": lambda records, meta: format_regime_table(records),
    "speed": lambda records, meta: _block(format_speed_table(records)),
    "speed/targets": lambda records, meta: _block(format_speed_targets(meta["targets"])),
    "train_speed": lambda records, meta: format_train_speed_table(records),
    "transfer": lambda records, meta: format_records_table(records),
    "transfer/targets": lambda records, meta: _block(format_transfer_targets(meta)),
}


def render_table(name: str, results: str | Path) -> str:
    """The text of the region named ``name``: ``config/<section>``, ``config/bundled``, or ``<stem>[/<kind>]``
    rendered from ``<results>/<stem>.json`` and its meta file."""
    stem, _, kind = name.partition("/")
    if stem == "config":
        return _bundled_configs() if kind == "bundled" else _config_keys(kind)
    key = _FAMILY.sub("", stem) + (f"/{kind}" if kind else "")
    if key not in TABLES:
        raise ValueError(f"unknown table {name!r}: a results file's stem followed by one of "
                         f"{sorted(TABLES)} (family/kind), or config/<section>, config/bundled")
    path = Path(results) / f"{stem}.json"
    if not path.is_file():
        raise FileNotFoundError(f"table {name!r} needs {path}, which does not exist")
    meta = json.loads(meta_path(path).read_text()) if meta_path(path).is_file() else {}
    return TABLES[key](json.loads(path.read_text()), meta)


def render_text(text: str, results: str | Path) -> tuple[str, list[str]]:
    """``text`` with every table region rendered anew, and the names of the regions whose text changed."""
    changed: list[str] = []

    def replace(match: re.Match[str]) -> str:
        body = render_table(match["name"], results) + "\n"
        if body != match["body"]:
            changed.append(match["name"])
        return match[1] + body + match[4]

    rendered = REGION.sub(replace, text)
    opened, closed = len(_OPEN.findall(text)), len(_CLOSE.findall(text))
    if opened != closed or opened != len(REGION.findall(text)):
        raise ValueError(f"{opened} lines open a table ('<!-- table: NAME -->') and {closed} close one "
                         "('<!-- /table -->'): every region is one opening line, its table, one closing line")
    return rendered, changed


def render_docs(docs: str | Path, results: str | Path, write: bool = True) -> dict[Path, list[str]]:
    """Render every table region of ``docs/*.md`` from ``results``; rewrite the files (``write``) and return,
    per file, the tables that differed from what was there."""
    differ: dict[Path, list[str]] = {}
    for page in sorted(Path(docs).glob("*.md")):
        text = page.read_text()
        try:
            rendered, changed = render_text(text, results)
        except (ValueError, FileNotFoundError) as err:
            raise ValueError(f"{page}: {err}") from None
        if changed:
            differ[page] = changed
            if write:
                page.write_text(rendered)
    return differ
