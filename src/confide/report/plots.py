"""PNG plots of a job: learning curves, the metric per site per model, the cross-site heatmap and each site's
gain from federation. A metric undefined at a site (NaN) is drawn as no bar or an empty cell marked ``n/a``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

Cross = Mapping[str, Mapping[str, Mapping[str, float]]]


def _label(metric: str) -> str:
    return metric.replace("_", " ")


def learning_curves(curves: Mapping[str, Sequence[Mapping[str, float]]], metric: str, out: Path) -> Path:
    """Training loss per round and the metric over all sites' test splits where it was measured, one line per
    model (fine-tuned models, trained after the rounds, are not drawn)."""
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, points in curves.items():
        if name.startswith("finetuned:"):
            continue
        style = "-" if not name.startswith("local:") else "--"
        width = 2.4 if not name.startswith("local:") else 1.2
        rounds = [p["round"] for p in points]
        ax_loss.plot(rounds, [p["loss"] for p in points], style, lw=width, label=name)
        scores = [(p["round"], p[metric]) for p in points if metric in p]
        if scores:
            ax_metric.plot(*zip(*scores, strict=True), style, lw=width, marker="o", ms=3, label=name)
    ax_loss.set(title="training loss", xlabel="round", ylabel="loss")
    ax_metric.set(title=f"{_label(metric)}, mean over the sites' test splits", xlabel="round", ylabel=_label(metric))
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
    ax_metric.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def metric_per_site(cross: Cross, metric: str, out: Path) -> Path:
    """Grouped bars: for each site (and the mean over sites), the metric of every model."""
    models = list(cross)
    sites = list(next(iter(cross.values())))
    x = np.arange(len(sites))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(sites) + 2), 4.4))
    for i, model in enumerate(models):
        values = [cross[model][s][metric] for s in sites]
        where = x + (i - (len(models) - 1) / 2) * width
        ax.bar(where, values, width, label=model)
        for at, value in zip(where, values, strict=True):
            if not np.isfinite(value):
                ax.text(at, 0, "n/a", ha="center", va="bottom", rotation=90, fontsize=6)
    ax.set_xticks(x, [s if s != "all" else "mean" for s in sites])
    ax.set(ylabel=_label(metric), title=f"{_label(metric)} of each model on each site's test split")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def heatmap(cross: Cross, metric: str, out: Path) -> Path:
    """Models (rows: local-only, pooled, federated, fine-tuned) x sites' test splits (columns)."""
    models = list(cross)
    sites = [s for s in next(iter(cross.values())) if s != "all"]
    grid = np.array([[cross[m][s][metric] for s in sites] for m in models], dtype=float)
    finite = grid[np.isfinite(grid)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    fig, ax = plt.subplots(figsize=(1.2 * len(sites) + 4.0, 0.45 * len(models) + 1.8))
    image = ax.imshow(grid, vmin=low, vmax=high, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(sites)), sites, rotation=20)
    ax.set_yticks(range(len(models)), models)
    middle = (low + high) / 2
    for i in range(len(models)):
        for j in range(len(sites)):
            value = grid[i, j]
            if not np.isfinite(value):
                ax.text(j, i, "n/a", ha="center", va="center", color="k", fontsize=8)
                continue
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="w" if value < middle else "k", fontsize=8)
    ax.set_title(f"{_label(metric)}: model (rows) on each site's test split (columns)")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def site_gains(table: Mapping[str, Mapping[str, float]], metric: str, out: Path) -> Path:
    """For each site on its own test split: local-only, federated, fine-tuned and pooled side by side."""
    sites = list(table)
    kinds = [k for k in ("local", "federated", "finetuned", "pooled") if any(k in row for row in table.values())]
    x = np.arange(len(sites))
    width = 0.8 / max(len(kinds), 1)
    fig, ax = plt.subplots(figsize=(max(6.5, 1.5 * len(sites) + 2), 4.2))
    for i, kind in enumerate(kinds):
        values = [table[s].get(kind, np.nan) for s in sites]
        ax.bar(x + (i - (len(kinds) - 1) / 2) * width, values, width, label=kind)
    ax.set_xticks(x, sites)
    ax.set(ylabel=_label(metric), title="what federation gained each site (its own test split)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def privacy_ledger(
    spent: Mapping[str, Mapping[int, float]], budgets: Mapping[str, float | None], delta: float, out: Path
) -> Path:
    """Each site's cumulative epsilon (at ``delta``) after each round, with its budget as a dashed line."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for site, per_round in sorted(spent.items()):
        rounds = sorted(per_round)
        (line,) = ax.plot(rounds, [per_round[r] for r in rounds], marker="o", ms=3, lw=1.8, label=site)
        budget = budgets.get(site)
        if budget is not None:
            ax.axhline(budget, ls="--", lw=1.0, color=line.get_color(), alpha=0.7)
    ax.set(title=f"privacy spent per site (epsilon at delta {delta:g}; dashed: budget)", xlabel="round")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("epsilon, cumulative")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
