"""MkDocs hook: the Benchmarks page shows the result tables in benchmarks/results/ as they are.

The marker ``<!-- benchmark results -->`` in docs/benchmarks.md is replaced by every
``benchmarks/results/*.md`` file (accuracy first, then speed, then the rest), each with its
headings moved one level down so that the page keeps a single title. Nothing is copied by hand:
rerun a benchmark, rebuild the site, and the page shows the new tables with their date and machine.
"""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
MARKER = "<!-- benchmark results -->"
ORDER = ("accuracy", "speed")


def _order(path: Path) -> tuple[int, str]:
    rank = next((i for i, prefix in enumerate(ORDER) if path.name.startswith(prefix)), len(ORDER))
    return rank, path.name


def demote_headings(text: str) -> str:
    """``# Title`` -> ``## Title`` (and so on), outside fenced code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        if not fenced and re.match(r"#{1,5} ", line):
            line = "#" + line
        out.append(line)
    return "\n".join(out)


def results_markdown(results: Path | None = None) -> str:
    """All result files (default: benchmarks/results/) as one markdown text, or a note when none."""
    results = RESULTS if results is None else results
    files = sorted(results.glob("*.md"), key=_order) if results.is_dir() else []
    if not files:
        return ("*No benchmark results yet: run `python benchmarks/accuracy.py` and "
                "`python benchmarks/speed.py` (see `benchmarks/README.md`).*")
    parts = [f"<!-- from benchmarks/results/{f.name} -->\n\n{demote_headings(f.read_text())}" for f in files]
    return "\n\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (mkdocs hook)
    if MARKER in markdown:
        return markdown.replace(MARKER, results_markdown())
    return markdown
