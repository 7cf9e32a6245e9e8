"""The README and the pages under docs/ say nothing about speed or memory that a committed file does not show,
and every file they cite or link exists."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
NUMBER = re.compile(r"(?<![\w.-])\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?(?![\w])", re.IGNORECASE)


def numbers(text: str) -> set[float]:
    """Every figure in ``text``; a ratio written 1.40x counts as 1.40, a name such as CIFAR-10 is no figure."""
    text = re.sub(r"(\d)x\b", r"\1 ", text)
    return {float(token.replace(",", "")) for token in NUMBER.findall(text)}


def benchmark_rows() -> list[tuple[str, str, list[str]]]:
    section = (ROOT / "docs" / "benchmarks.md").read_text()
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("benchmark", "---"):
            rows.append((cells[0], cells[1], re.findall(r"`([^`]+\.md)`", cells[2])))
    return rows


def test_every_figure_in_the_readme_benchmark_table_is_in_the_file_it_cites():
    rows = benchmark_rows()
    assert len(rows) >= 7
    for benchmark, result, files in rows:
        assert files, f"row {benchmark!r} cites no file"
        cited = set().union(*(numbers((ROOT / f).read_text()) for f in files))
        missing = {x for x in numbers(benchmark + " " + result) if x not in cited}
        assert not missing, f"row {benchmark!r}: {sorted(missing)} not in {files}"


def test_the_check_catches_a_figure_that_is_not_in_its_file():
    assert numbers("618.0 vs 440.4 img/s: 1.40x, 1,166.8 s, 1.4e-9, CIFAR-10") == {618.0, 440.4, 1.4, 1166.8, 1.4e-9}
    assert numbers("| 618   | 1.4e-09 |") <= numbers("618.0 and 1.4e-9")
    assert 619.0 not in numbers((ROOT / "results/benchmarks/pretrain_throughput_15a1502.md").read_text())


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)[^)]*\)")
CITED = re.compile(r"`((?:results|configs|benchmarks|tests|dcgan_features|docs)/[^`*\s]+)`")
PLACEHOLDER = re.compile(r"[A-Z]{2,}|seedN|/X\.")  # results/benchmarks/NAME.md, RUN/..., seedN: a pattern, not a file


def test_the_readme_links_every_docs_page_and_every_link_and_cited_file_exists():
    readme = (ROOT / "README.md").read_text()
    for page in DOCS[1:]:
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"
    for page in DOCS:
        text = page.read_text()
        for target in LINK.findall(text):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links {target}, which does not exist"
        for cited in CITED.findall(text):
            if not PLACEHOLDER.search(cited):
                assert (ROOT / cited.rstrip(".,:;")).exists(), f"{page.name} cites {cited}, which does not exist"
