"""The documentation says what the code and the committed results say.

The benchmark tables of ``docs/*.md`` and the configs page are generated (``basisnet docs``): a table edited by
hand, a results file changed without re-rendering, or a config key added without its page fails here. So does
a link to a file or heading that does not exist, a test cited by name that does not exist, and history (dates,
clock times, commit hashes, "this change") in README.md or docs/: that belongs in CHANGELOG.md.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from basisnet.bench.tables import TABLES, render_docs, render_table, render_text
from basisnet.cli import main
from basisnet.train import config_help

ROOT = Path(__file__).resolve().parents[1]
DOCS, RESULTS = ROOT / "docs", ROOT / "benchmarks" / "results"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
REGION = re.compile(r"^<!-- table: (?P<name>[^ ]+) -->$", re.M)


def test_committed_tables_are_what_basisnet_docs_renders_from_the_committed_results() -> None:
    assert render_docs(DOCS, RESULTS, write=False) == {}, "run `basisnet docs` and commit the pages"


def test_every_renderer_is_used_by_a_page_and_every_config_section_has_its_table() -> None:
    names = {m["name"] for page in DOCS.glob("*.md") for m in REGION.finditer(page.read_text())}
    families = {re.sub(r"(_n\d+|_s\d+)?(_quick)?(/|$)", r"\3", name) for name in names}
    assert set(TABLES) <= families
    sections = {key.split(".")[0] for key, _, _ in config_help()}
    assert {f"config/{section}" for section in sections} <= names


def _copy_docs(tmp_path: Path, page: str) -> tuple[Path, Path]:
    docs, results = tmp_path / "docs", tmp_path / "results"
    docs.mkdir()
    (docs / "page.md").write_text(page)
    shutil.copytree(RESULTS, results)
    return docs, results


def test_a_changed_record_is_named_by_check_and_rewritten_without_it(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    page = "Intro.\n\n<!-- table: train_speed -->\n" + render_table("train_speed", RESULTS) + "\n<!-- /table -->\n\nEnd.\n"
    docs, results = _copy_docs(tmp_path, page)
    records = json.loads((results / "train_speed.json").read_text())
    records[0]["train_images_per_s"] = 4321.0
    (results / "train_speed.json").write_text(json.dumps(records))

    assert main(["docs", "--check", "--docs", str(docs), "--results", str(results)]) == 1
    assert "train_speed" in capsys.readouterr().out
    assert (docs / "page.md").read_text() == page  # --check rewrites nothing
    assert main(["docs", "--docs", str(docs), "--results", str(results)]) == 0
    rewritten = (docs / "page.md").read_text()
    assert "| 4321 |" in rewritten and rewritten.startswith("Intro.\n\n") and rewritten.endswith("\n\nEnd.\n")
    assert main(["docs", "--check", "--docs", str(docs), "--results", str(results)]) == 0


def test_a_suffixed_results_file_renders_with_its_family() -> None:
    text, changed = render_text("<!-- table: ablation_s4000 -->\n<!-- /table -->\n", RESULTS)
    assert changed == ["ablation_s4000"]
    assert text.count("\n| ") == len(json.loads((RESULTS / "ablation_s4000.json").read_text())) + 1


@pytest.mark.parametrize("page, error", [
    ("<!-- table: no_such_bench -->\n<!-- /table -->\n", "unknown table 'no_such_bench'"),
    ("<!-- table: compare_n123 -->\n<!-- /table -->\n", "compare_n123.json, which does not exist"),
    ("<!-- table: compare -->\n| stale |\n", "every region is one opening line"),
])
def test_a_bad_region_is_an_error_naming_the_page(tmp_path: Path, page: str, error: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    docs, results = _copy_docs(tmp_path, page)
    assert main(["docs", "--check", "--docs", str(docs), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert "page.md" in err and error in err


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchors(path: Path) -> set[str]:
    return {_slug(m[1]) for m in re.finditer(r"^#+ (.+)$", _prose(path.read_text()), re.M)}


@pytest.mark.parametrize("page", [*PAGES, ROOT / "BENCHMARKS.md", ROOT / "CHANGELOG.md"], ids=lambda p: p.name)
def test_every_relative_link_reaches_a_file_and_heading(page: Path) -> None:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists() or (anchor and anchor not in _anchors(path)):
            broken.append(target)
    assert not broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_cited_test_exists(page: Path) -> None:
    missing = []
    for line in page.read_text().split("\n"):
        file = None
        for m in re.finditer(r"(?:tests/)?(test_\w+\.py)?::(test_\w+)", line):
            file = m[1] or file  # `::name` continues the file named before it on the line
            source = ROOT / "tests" / str(file)
            if not source.is_file() or not re.search(rf"def {m[2]}\b", source.read_text()):
                missing.append(f"{file}::{m[2]}")
    assert not missing


HISTORY = re.compile(r"\b20\d\d-\d\d-\d\d\b|\b\d{1,2}:\d\d\b|\bissue \d+|\bthis (change|session)\b|\bwas lent\b"
                     r"|\bcommit [0-9a-f]{7,40}\b|(?<![-\w])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_readme_and_docs_carry_no_history(page: Path) -> None:
    assert not [m[0] for m in HISTORY.finditer(page.read_text())]


def test_readme_is_the_front_door() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_the_python_api_page_runs_as_written() -> None:
    """Every ``python`` block of docs/python-api.md, pasted in order into one interpreter, runs: a renamed or
    re-typed API (a predictor over Stages, layer weights, execution policies) fails here, not for a reader."""
    import torch

    text = (DOCS / "python-api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2
    torch.manual_seed(0)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/python-api.md", "exec"), namespace)  # noqa: S102 - the page's own code
    assert namespace["out"] is not None
