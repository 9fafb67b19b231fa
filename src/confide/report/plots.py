"""PNG plots of a job: learning curves and Dice per site per model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def learning_curves(curves: Mapping[str, Sequence[Mapping[str, float]]], out: Path) -> Path:
    """Training loss per round and mean test Dice (all sites) where it was measured, one line per model."""
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, points in curves.items():
        style = "-" if not name.startswith("local:") else "--"
        width = 2.4 if not name.startswith("local:") else 1.2
        rounds = [p["round"] for p in points]
        ax_loss.plot(rounds, [p["loss"] for p in points], style, lw=width, label=name)
        dice = [(p["round"], p["dice_mean"]) for p in points if "dice_mean" in p]
        if dice:
            ax_dice.plot(*zip(*dice, strict=True), style, lw=width, marker="o", ms=3, label=name)
    ax_loss.set(title="training loss (Dice + BCE)", xlabel="round", ylabel="loss")
    ax_dice.set(title="mean Dice on all sites' test cases", xlabel="round", ylabel="Dice", ylim=(0, 1))
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
    ax_dice.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def dice_per_site(cross: Mapping[str, Mapping[str, Mapping[str, float]]], out: Path) -> Path:
    """Grouped bars: for each site (and all sites), the mean Dice of every model."""
    models = list(cross)
    sites = list(next(iter(cross.values())))
    x = np.arange(len(sites))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(sites) + 2), 4.4))
    for i, model in enumerate(models):
        values = [cross[model][s]["dice_mean"] for s in sites]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, values, width, label=model)
    ax.set_xticks(x, sites)
    ax.set(ylabel="mean Dice (WT, TC, ET)", ylim=(0, 1), title="Dice of each model on each site's test cases")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def heatmap(cross: Mapping[str, Mapping[str, Mapping[str, float]]], out: Path) -> Path:
    """Models x sites matrix of mean Dice."""
    models = list(cross)
    sites = list(next(iter(cross.values())))
    grid = np.array([[cross[m][s]["dice_mean"] for s in sites] for m in models])
    fig, ax = plt.subplots(figsize=(1.1 * len(sites) + 3.5, 0.5 * len(models) + 1.6))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(sites)), sites)
    ax.set_yticks(range(len(models)), models)
    for i in range(len(models)):
        for j in range(len(sites)):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w" if grid[i, j] < 0.6 else "k")
    ax.set_title("mean Dice: model (rows) on site's test cases (columns)")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
