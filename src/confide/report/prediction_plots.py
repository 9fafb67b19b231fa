"""Pictures of predictions, as PNG files: segmentation outlines on the image, confusion matrices, ROC curves and
Kaplan-Meier curves of risk groups. Legends stand outside the axes, so they hide no data.

Every function takes the outputs the tasks gave (:mod:`confide.api_use`) and writes one file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from confide.api_use import ClassOutputs, RiskOutputs, SegmentationSlices
from confide.report.kaplan_meier import kaplan_meier, risk_groups
from confide.tasks.class_metrics import confusion_matrix

TRUTH_COLOUR = "#00c853"  # green
PREDICTED_COLOUR = "#ff1744"  # red
LineStyle = Literal["solid", "dashed", "dotted"]
REGION_STYLES: tuple[LineStyle, ...] = ("solid", "dashed", "dotted")  # WT, TC, ET
CURVE_COLOURS = ("#1565c0", "#ef6c00", "#6a1b9a", "#2e7d32")
DPI = 110


def _outline(ax: plt.Axes, mask: np.ndarray, colour: str, style: LineStyle) -> None:
    if mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linestyles=[style], linewidths=1.2)


def segmentation_overlays(
    site: str, models: Sequence[tuple[str, SegmentationSlices]], cases: Sequence[int], metric: str, out: Path
) -> Path:
    """One row per case (the indices ``cases`` of the site's test split), one column per model: the image with the
    true regions outlined in green and the predicted ones in red (WT solid, TC dashed, ET dotted), each titled with
    the case's score."""
    rows, columns = len(cases), len(models)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns + 1.6, 2.6 * rows + 0.6), squeeze=False)
    regions = models[0][1].regions
    for r, case in enumerate(cases):
        for c, (name, view) in enumerate(models):
            ax = axes[r][c]
            ax.imshow(view.images[case], cmap="gray", interpolation="nearest")
            for k in range(len(regions)):
                style = REGION_STYLES[k % len(REGION_STYLES)]
                _outline(ax, view.truth[case, k], TRUTH_COLOUR, style)
                _outline(ax, view.predicted[case, k], PREDICTED_COLOUR, style)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}\n{view.case_ids[case]}: {metric} {view.scores[case]:.3f}", fontsize=7)
    handles = [
        Line2D([], [], color=TRUTH_COLOUR, label="ground truth"),
        Line2D([], [], color=PREDICTED_COLOUR, label="prediction"),
    ]
    handles += [
        Line2D([], [], color="black", linestyle=REGION_STYLES[k % 3], label=name) for k, name in enumerate(regions)
    ]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    fig.suptitle(f"{site}: test cases, one axial slice each", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return out


def confusion_matrices(models: Mapping[str, ClassOutputs], out: Path) -> Path:
    """One confusion matrix per model (rows: true class, columns: predicted), counts in the cells."""
    names = list(models)
    columns = min(4, len(names))
    rows = -(-len(names) // columns)
    classes = next(iter(models.values())).classes
    side = 1.2 + 0.35 * len(classes)
    fig, axes = plt.subplots(rows, columns, figsize=(side * columns + 0.8, side * rows + 0.6), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        view = models[name]
        matrix = confusion_matrix(view.truth, view.probabilities.argmax(axis=1), len(classes))
        ax.imshow(matrix, cmap="Blues")
        top = matrix.max() if matrix.size else 0
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(
                j,
                i,
                str(int(count)),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if count > top / 2 else "black",
            )
        ax.set_xticks(range(len(classes)), classes, fontsize=6, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes, fontsize=6)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
        ax.set_title(f"{name} (n {len(view.truth)})", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return out


def roc_points(truth: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates of the ROC curve of ``score`` against 0/1 ``truth`` (each distinct score a
    threshold), from (0, 0) to (1, 1); empty when a class is absent."""
    t = np.asarray(truth).astype(bool).reshape(-1)
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    positives, negatives = int(t.sum()), int((~t).sum())
    if positives == 0 or negatives == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # the last example of each distinct score
    tp = np.cumsum(t)[last]
    fp = np.cumsum(~t)[last]
    return np.r_[0.0, fp / negatives], np.r_[0.0, tp / positives]


def _micro(view: ClassOutputs) -> tuple[np.ndarray, np.ndarray]:
    """Binary: the positive class's ROC; more classes: the micro-averaged one-vs-rest ROC."""
    if len(view.classes) == 2:
        return roc_points(view.truth == 1, view.probabilities[:, 1])
    onehot = view.truth[:, None] == np.arange(len(view.classes))[None, :]
    return roc_points(onehot.reshape(-1), view.probabilities.reshape(-1))


def _panel_grid(panels: int, *, height: float, margin: float) -> tuple[Any, np.ndarray]:
    """A figure of ``panels`` panels, at most 4 a row, room on the right for a legend; unused panels hidden."""
    columns = min(4, panels)
    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns + 1.8, height * rows + margin), squeeze=False)
    for ax in axes.flat[panels:]:
        ax.axis("off")
    return fig, axes


def roc_curves(panels: Mapping[str, Mapping[str, ClassOutputs]], out: Path) -> Path:
    """One panel per site (or "all sites"), one ROC curve per model in it."""
    names = list(panels)
    fig, axes = _panel_grid(len(names), height=3.0, margin=0.4)
    multiclass = False
    for ax, site in zip(axes.flat, names, strict=False):
        for k, (model, view) in enumerate(panels[site].items()):
            multiclass = multiclass or len(view.classes) > 2
            fpr, tpr = _micro(view)
            if fpr.size:
                ax.plot(fpr, tpr, color=CURVE_COLOURS[k % len(CURVE_COLOURS)], linewidth=1.3, label=model)
        ax.plot([0, 1], [0, 1], color="#9e9e9e", linewidth=0.8, linestyle=":")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("false positive rate", fontsize=7)
        ax.set_ylabel("true positive rate", fontsize=7)
        ax.set_title(site, fontsize=8)
        ax.tick_params(labelsize=6)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    if multiclass:
        fig.suptitle("micro-averaged one-vs-rest ROC", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return out


def kaplan_meier_groups(panels: Mapping[str, RiskOutputs], model: str, out: Path) -> Path:
    """One panel per site: Kaplan-Meier curves of the high- and low-risk halves of its test split (split at the
    median of ``model``'s risk), censored times marked."""
    names = list(panels)
    fig, axes = _panel_grid(len(names), height=2.8, margin=0.5)
    for ax, site in zip(axes.flat, names, strict=False):
        view = panels[site]
        high = risk_groups(view.risk)
        for group, label, colour in ((~high, "low risk", CURVE_COLOURS[0]), (high, "high risk", CURVE_COLOURS[1])):
            if not group.any():
                continue
            t, s = kaplan_meier(view.time[group], view.event[group])
            ax.step(t, s, where="post", color=colour, linewidth=1.3, label=f"{label} (n {int(group.sum())})")
            censored = view.time[group][view.event[group] == 0]
            at = np.searchsorted(t, censored, side="right") - 1
            ax.plot(censored, s[np.clip(at, 0, None)], "|", color=colour, markersize=5)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("time", fontsize=7)
        ax.set_ylabel("survival", fontsize=7)
        ax.set_title(site, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.suptitle(f"{model}: risk groups split at each site's median predicted risk", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return out
