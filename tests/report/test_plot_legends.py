"""Every plot's legend stands outside its axes, so it hides no data, with a few sites and with 50; with 50 sites the
figure stays within bounds and the many per-site models make one legend entry, not fifty."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from confide.report import plots
from confide.report.tables import gains

Draw = Callable[[Path], Path]


def _cross(n_sites: int) -> dict[str, dict[str, dict[str, float]]]:
    rng = np.random.default_rng(0)
    sites = [f"hospital-{i:02d}" for i in range(n_sites)]
    models = [f"local:{s}" for s in sites] + ["pooled", "fedavg"] + [f"finetuned:{s}" for s in sites]
    cross: dict[str, dict[str, dict[str, float]]] = {}
    for model in models:
        per = {s: {"auc": float(rng.uniform(0.5, 0.9)), "cases": 40.0} for s in sites}
        per["all"] = {"auc": float(np.mean([v["auc"] for v in per.values()])), "cases": 40.0 * n_sites}
        cross[model] = per
    return cross


def _drawings(n_sites: int) -> dict[str, Draw]:
    cross = _cross(n_sites)
    sites = [s for s in next(iter(cross.values())) if s != "all"]
    curves = {m: [{"round": float(r), "loss": 0.5, "auc": 0.7} for r in (1, 2, 3)] for m in cross}
    spent = {s: {r: 0.4 * r for r in (1, 2, 3)} for s in sites}
    return {
        "curves": lambda out: plots.learning_curves(curves, "auc", out),
        "per_site": lambda out: plots.metric_per_site(cross, "auc", out),
        "gains": lambda out: plots.site_gains(gains(cross, "auc", "fedavg"), "auc", out),
        "ledger": lambda out: plots.privacy_ledger(spent, dict.fromkeys(sites, 8.0), 1e-5, out),
    }


def _drawn(draw: Draw, out: Path, monkeypatch: pytest.MonkeyPatch) -> Figure:
    """The figure ``draw`` saves (kept open to measure)."""
    kept: list[Figure] = []
    save = plots._save

    def keep(fig: Figure, path: Path) -> Path:
        fig.canvas.draw()
        kept.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    draw(out)
    return kept[0]


@pytest.mark.parametrize("n_sites", [3, 50])
@pytest.mark.parametrize("plot", ["curves", "per_site", "gains", "ledger"])
def test_the_legend_hides_no_data(plot: str, n_sites: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fig = _drawn(_drawings(n_sites)[plot], tmp_path / "plot.png", monkeypatch)

    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    boxes = [leg.get_window_extent() for leg in legends]
    areas = [ax.get_window_extent() for ax in fig.axes]

    assert legends, "a plot of several series has a legend"
    for box in boxes:
        assert not any(box.overlaps(area) for area in areas)
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_fifty_sites_stay_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cross = _cross(50)

    curves = _drawn(_drawings(50)["curves"], tmp_path / "curves.png", monkeypatch)
    plots.heatmap(cross, "auc", tmp_path / "heatmap.png")

    labels = [text.get_text() for legend in curves.legends for text in legend.get_texts()]
    assert labels == ["local-only models (50, one per site)", "pooled", "fedavg"]
    assert curves.get_size_inches()[0] <= plots.WIDEST
    with Image.open(tmp_path / "heatmap.png") as image:
        assert image.size[0] <= plots.WIDEST * 110 + 200  # bounded, labels and colour bar included
