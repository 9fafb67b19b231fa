"""PNG plots of a job: learning curves, the metric per site per model, the cross-site heatmap, each site's gain from
federation and the privacy ledger. A metric undefined at a site (NaN) is drawn as no bar or an empty cell marked
``n/a``.

Every legend stands outside the axes (beside them, or below them when it holds many entries), so it never hides a
line or a bar; figures grow with the number of sites up to a bound, and with many sites the labels turn and shrink
and the many per-site models are drawn as one grey family with one legend entry, so a job of 50 sites stays
readable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

Cross = Mapping[str, Mapping[str, Mapping[str, float]]]

BESIDE = 10
"""A legend of up to this many entries stands to the right of the axes; a longer one below them, in columns."""
FAMILY = 6
"""Above this many per-site models (local-only, fine-tuned) of one kind, they are drawn as one grey family."""
WIDEST = 22.0
"""The widest figure, in inches (at 110 dpi: about 2400 pixels)."""


def _label(metric: str) -> str:
    return metric.replace("_", " ")


def _legend(ax: Axes) -> None:
    """The legend of ``ax`` outside its axes: to the right, or below in columns when long."""
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) <= BESIDE:
        ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        columns = min(6, max(2, math.ceil(len(labels) / 8)))
        ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=columns)


def _figure_legend(fig: Figure, ax: Axes) -> None:
    """One legend for a figure of two panels (the labels of ``ax``), outside both: right, or below when long."""
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) <= BESIDE:
        fig.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 0.95))
    else:
        columns = min(6, max(2, math.ceil(len(labels) / 8)))
        fig.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=columns)


def _site_ticks(ax: Axes, positions: Sequence[float] | np.ndarray, names: Sequence[str]) -> None:
    """Site names under the axis: turned and smaller as the sites grow."""
    many = len(names) > 8
    ax.set_xticks(list(positions), list(names), rotation=90 if many else 0, fontsize=6 if len(names) > 24 else 8)


def _width(columns: int, per: float, least: float) -> float:
    return float(min(WIDEST, max(least, per * columns + 2.0)))


def _save(fig: Figure, out: Path) -> Path:
    """Write ``fig`` as PNG, the legends outside the axes included, and free it."""
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def learning_curves(curves: Mapping[str, Sequence[Mapping[str, float]]], metric: str, out: Path) -> Path:
    """Training loss per round and the metric over all sites' test splits where it was measured, one line per
    model (fine-tuned models, trained after the rounds, are not drawn). Many local-only models are drawn as one
    grey family."""
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4.2))
    drawn = {name: points for name, points in curves.items() if not name.startswith("finetuned:")}
    locals_ = [name for name in drawn if name.startswith("local:")]
    family = len(locals_) > FAMILY
    labelled = False
    for name, points in drawn.items():
        local = name.startswith("local:")
        style = {"ls": "--" if local else "-", "lw": 1.0 if local else 2.4}
        if family and local:
            style.update(color="0.6", alpha=0.6, lw=0.8)
            label = None if labelled else f"local-only models ({len(locals_)}, one per site)"
            labelled = True
        else:
            label = name
        rounds = [p["round"] for p in points]
        ax_loss.plot(rounds, [p["loss"] for p in points], label=label, **style)
        scores = [(p["round"], p[metric]) for p in points if metric in p]
        if scores:
            ax_metric.plot(*zip(*scores, strict=True), marker="o", ms=3, **style)
    ax_loss.set(title="training loss", xlabel="round", ylabel="loss")
    ax_metric.set(title=f"{_label(metric)}, mean over the sites' test splits", xlabel="round", ylabel=_label(metric))
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    _figure_legend(fig, ax_loss)
    fig.tight_layout()
    return _save(fig, out)


def metric_per_site(cross: Cross, metric: str, out: Path) -> Path:
    """For each site's test split (and the mean over sites), the metric of every model: grouped bars for a few
    models; with many, each model a grey dot and the federated, pooled and the site's own models marked."""
    models = list(cross)
    sites = list(next(iter(cross.values())))
    names = [s if s != "all" else "mean" for s in sites]
    x = np.arange(len(sites), dtype=float)
    fig, ax = plt.subplots(figsize=(_width(len(sites), 1.6 if len(models) <= 8 else 0.5, 7.0), 4.4))
    if len(models) <= 8:
        width = 0.8 / len(models)
        for i, model in enumerate(models):
            values = [cross[model][s][metric] for s in sites]
            where = x + (i - (len(models) - 1) / 2) * width
            ax.bar(where, values, width, label=model)
            for at, value in zip(where, values, strict=True):
                if not np.isfinite(value):
                    ax.text(at, 0, "n/a", ha="center", va="bottom", rotation=90, fontsize=6)
    else:
        _strip(ax, cross, metric, sites, x)
    _site_ticks(ax, x, names)
    ax.set(ylabel=_label(metric), title=f"{_label(metric)} of each model on each site's test split")
    ax.grid(axis="y", alpha=0.3)
    _legend(ax)
    fig.tight_layout()
    return _save(fig, out)


def _strip(ax: Axes, cross: Cross, metric: str, sites: Sequence[str], x: np.ndarray) -> None:
    """Many models: every model's score at a site as a grey dot, the shared and the site's own models marked."""
    every = np.array([[cross[m][s][metric] for s in sites] for m in cross], dtype=float)
    ax.scatter(np.repeat(x[None, :], every.shape[0], 0).ravel(), every.ravel(), s=6, c="0.7", label="every model")
    shared = [m for m in cross if ":" not in m]  # the federated model and pooled
    for marker, model in zip("*^sD", shared, strict=False):
        ax.scatter(x, [cross[model][s][metric] for s in sites], s=40, marker=marker, label=model, zorder=3)
    for kind, marker in (("local", "v"), ("finetuned", "o")):
        own = [cross.get(f"{kind}:{s}", {}).get(s, {}).get(metric, np.nan) for s in sites]
        if any(np.isfinite(own)):
            ax.scatter(x, own, s=22, marker=marker, label=f"the site's own {kind} model", zorder=3)


def heatmap(cross: Cross, metric: str, out: Path) -> Path:
    """Models (rows: local-only, pooled, federated, fine-tuned) x sites' test splits (columns). Values are written
    in the cells while they fit (a few hundred cells); the colour bar reads the rest."""
    models = list(cross)
    sites = [s for s in next(iter(cross.values())) if s != "all"]
    grid = np.array([[cross[m][s][metric] for s in sites] for m in models], dtype=float)
    finite = grid[np.isfinite(grid)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    size = (_width(len(sites), 1.2 if len(sites) <= 12 else 0.32, 6.0), min(30.0, 0.3 * len(models) + 2.0))
    fig, ax = plt.subplots(figsize=size)
    image = ax.imshow(grid, vmin=low, vmax=high, cmap="viridis", aspect="auto")
    _site_ticks(ax, range(len(sites)), sites)
    ax.set_yticks(range(len(models)), models, fontsize=6 if len(models) > 30 else 8)
    middle = (low + high) / 2
    if grid.size <= 300:
        for i in range(len(models)):
            for j in range(len(sites)):
                value = grid[i, j]
                if not np.isfinite(value):
                    ax.text(j, i, "n/a", ha="center", va="center", color="k", fontsize=8)
                    continue
                colour = "w" if value < middle else "k"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", color=colour, fontsize=8)
    ax.set_title(f"{_label(metric)}: model (rows) on each site's test split (columns)")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    return _save(fig, out)


def site_gains(table: Mapping[str, Mapping[str, float]], metric: str, out: Path) -> Path:
    """For each site on its own test split: local-only, federated, fine-tuned and pooled side by side."""
    sites = list(table)
    kinds = [k for k in ("local", "federated", "finetuned", "pooled") if any(k in row for row in table.values())]
    x = np.arange(len(sites), dtype=float)
    width = 0.8 / max(len(kinds), 1)
    fig, ax = plt.subplots(figsize=(_width(len(sites), 1.5 if len(sites) <= 12 else 0.4, 6.5), 4.2))
    for i, kind in enumerate(kinds):
        values = [table[s].get(kind, np.nan) for s in sites]
        ax.bar(x + (i - (len(kinds) - 1) / 2) * width, values, width, label=kind)
    _site_ticks(ax, x, sites)
    ax.set(ylabel=_label(metric), title="what federation gained each site (its own test split)")
    ax.grid(axis="y", alpha=0.3)
    _legend(ax)
    fig.tight_layout()
    return _save(fig, out)


def privacy_ledger(
    spent: Mapping[str, Mapping[int, float]], budgets: Mapping[str, float | None], delta: float, out: Path
) -> Path:
    """Each site's cumulative epsilon (at ``delta``) after each round, with its budget as a dashed line (one black
    line when every site has the same budget), and beside it the epsilon each round added."""
    fig, (ax, ax_round) = plt.subplots(1, 2, figsize=(11, 4.2))
    given = {b for b in budgets.values() if b is not None}
    one_budget = len(given) == 1 and all(budgets.get(site) is not None for site in spent)
    for site, per_round in sorted(spent.items()):
        rounds = sorted(per_round)
        totals = [per_round[r] for r in rounds]
        (line,) = ax.plot(rounds, totals, marker="o", ms=3, lw=1.8, label=site)
        added = np.diff([0.0, *totals])
        ax_round.plot(rounds, added, marker="o", ms=3, lw=1.2, color=line.get_color())
        budget = budgets.get(site)
        if budget is not None and not one_budget:
            ax.axhline(budget, ls="--", lw=1.0, color=line.get_color(), alpha=0.7)
    if one_budget:
        ax.axhline(next(iter(given)), ls="--", lw=1.4, color="k", label=f"budget ({next(iter(given)):g})")
    ax.set(title=f"epsilon spent so far (delta {delta:g}; dashed: budget)", xlabel="round")
    ax.set_ylabel("epsilon, cumulative")
    ax_round.set(title="epsilon each round added", xlabel="round", ylabel="epsilon")
    for axis in (ax, ax_round):
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    _figure_legend(fig, ax)
    fig.tight_layout()
    return _save(fig, out)
