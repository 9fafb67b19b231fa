"""The HTML report can be sent as one file and trusted: every image embedded, nothing fetched from elsewhere, each
site's data, the job as run, each test split's size with small ones marked, and the privacy ledger when (and only
when) the job spent privacy."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from confide.model_file import confide_version
from confide.report.html_page import PNG, embed_images
from confide.report.site_data import dropped, reasons, site_rows
from confide.report.writer import write_report
from tests.report.jobs import SKIPPED, job_result

DP = {"dp_sgd": {"noise_multiplier": 2.0, "clip": 1.0}, "budget": {"epsilon": 8, "delta": 1e-5}}


class _Tags(HTMLParser):
    """Every start tag of a page with its attributes, and the text of each table row."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _page(path: Path) -> _Tags:
    parser = _Tags()
    parser.feed(path.read_text())
    return parser


@pytest.fixture(scope="module")
def private_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("private")
    write_report(job_result(out, DP), out)
    return out


@pytest.fixture(scope="module")
def plain_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plain")
    write_report(job_result(out), out)
    return out


def test_every_image_is_embedded_png_and_nothing_is_fetched(private_report: Path) -> None:
    page = _page(private_report / "report.html")

    images = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    linked = [(tag, attrs) for tag, attrs in page.tags if tag in ("script", "link", "iframe", "object", "embed")]
    sources = [attrs.get("src", "") + attrs.get("href", "") for _, attrs in page.tags]

    assert len(images) == 5  # curves, heatmap, gains, per site, privacy ledger
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    assert linked == []
    assert not any("://" in s or s.startswith("//") for s in sources)
    assert (private_report / "report.md").read_text().count(".png)") == 5  # the Markdown keeps its files
    assert (private_report / "privacy_ledger.png").read_bytes().startswith(PNG)


def test_a_picture_another_section_adds_is_embedded_and_a_missing_one_is_said(tmp_path: Path) -> None:
    (tmp_path / "overlay.png").write_bytes(PNG + b"rest of a picture")
    document = '<p>x</p><img alt="a case" src="overlay.png"><img src="gone.png"><img src="https://x.org/t.png">'

    embedded = embed_images(document, tmp_path)

    assert '<img alt="a case" src="data:image/png;base64,' in embedded
    assert base64.b64encode(PNG + b"rest of a picture").decode() in embedded
    assert "gone.png could not be embedded" in embedded and "x.org/t.png could not be embedded" in embedded
    assert 'src="gone.png"' not in embedded and 'src="https://' not in embedded


def test_the_site_table_shows_the_splits_and_what_was_dropped(private_report: Path, tmp_path: Path) -> None:
    result = job_result(tmp_path)

    header, body = site_rows(result)
    page = _page(private_report / "report.html")

    assert header[:3] == ["site", "training examples", "test examples"]
    assert body[1][:3] == ["Hungary", "173", "15"] and body[0][:3] == ["Cleveland", "203", "101"]
    assert dropped(SKIPPED) == 7 and body[1][4] == "7"  # three listed, and "4 more rows"
    assert reasons(SKIPPED) == "no value for chol (6); no value for fbs (1)"
    assert "38% positive" in body[1][3]
    assert body[1] in page.rows  # the same row in the HTML table
    assert json.loads((private_report / "metrics.json").read_text())["sites"]["Hungary"]["dropped"] == 7


def test_the_job_as_run_names_the_version_the_times_and_the_config(private_report: Path) -> None:
    page = _page(private_report / "report.html")
    text = (private_report / "report.html").read_text()
    run = json.loads((private_report / "metrics.json").read_text())["run"]

    facts = {row[0]: row[1] for row in page.rows if len(row) == 2}
    assert facts["Confide"] == confide_version() == run["version"]
    assert facts["duration"] == "9.5 s" and run["seconds"] == 9.5
    assert facts["started"].endswith("UTC") and run["started"] < run["ended"]
    assert facts["torch"] and facts["Python"] and facts["command"]
    assert "<summary>the job's configuration (YAML)</summary>" in text
    assert "name: trust-check" in text and "seed: 7" in text and "noise_multiplier: 2.0" in text


def test_each_test_split_size_stands_beside_its_scores_and_small_ones_are_marked(private_report: Path) -> None:
    page = _page(private_report / "report.html")
    text = (private_report / "report.html").read_text()

    headers = page.rows[next(i for i, row in enumerate(page.rows) if row[0] == "model")]
    fedavg = next(row for row in page.rows if row[0] == "fedavg")

    assert headers[1:3] == ["Cleveland (n=101)", "Hungary (n=15)"]
    assert fedavg[1:3] == ["0.840", "0.533\u2020"]  # 15 cases: marked; 101: not
    assert "\u2020 test split under 30 cases: Hungary (n=15)" in text and "confidence interval" in text
    assert ["Hungary", "15", "0.800\u2020", "0.533\u2020", "-0.267\u2020"] in page.rows  # the gains table


def test_the_ledger_section_appears_with_privacy_only(private_report: Path, plain_report: Path) -> None:
    private = _page(private_report / "report.html")
    private_md = (private_report / "report.md").read_text()
    plain_md = (plain_report / "report.md").read_text()

    summary = next(row for row in private.rows if row[:2] == ["Hungary", "dp-sgd"])
    assert "## Privacy ledger" in private_md and "What it does not claim" in private_md
    assert summary[3] == "3 of 3" and summary[5:] == ["8", f"{float(summary[4]) / 8:.0%}", "1e-05"]
    assert "clip=1" in summary[2] and "noise_multiplier=2" in summary[2]
    assert "record level" in private_md and "Only the federated run is private" in private_md
    assert "Privacy" not in plain_md and not (plain_report / "privacy_ledger.png").exists()


def test_a_job_whose_privacy_spends_nothing_says_no_epsilon_is_claimed(tmp_path: Path) -> None:
    result = job_result(tmp_path, {"filters": [{"type": "sparsify", "fraction": 0.25}]})

    write_report(result, tmp_path)

    report = (tmp_path / "report.md").read_text()
    assert "## Privacy\n" in report and "not differential privacy" in report
    assert "## Privacy ledger" not in report
