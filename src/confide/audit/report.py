"""An audit's files: ``audit.md``, ``audit.json`` and PNG figures (the epsilons as bars; for images, the true image
beside each configuration's reconstruction)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from confide.audit.result import AuditResult, AuditRow
from confide.report.tables import markdown_table

HEADER = ("configuration", "ledger eps", "record bound", "attack", "proven eps", "check")


def _epsilon(value: float, infinite: str) -> str:
    return infinite if math.isinf(value) else f"{value:.3g}"


def row_cells(row: AuditRow) -> list[str]:
    """One row of the table, as text (the terminal and the Markdown share it)."""
    check = "BUG: lower > upper" if row.violation else ("ok" if not math.isinf(row.record_epsilon) else "no bound")
    return [
        row.label,
        _epsilon(row.ledger_epsilon, "not DP"),
        _epsilon(row.record_epsilon, "none"),
        row.summary,
        f"{row.lower_epsilon:.3g}",
        check,
    ]


def header(result: AuditResult) -> list[str]:
    return list(HEADER)


def legend(result: AuditResult) -> str:
    """What the columns mean."""
    confidence = result.settings.get("confidence", 0.95)
    delta = result.settings.get("delta", 1e-5)
    return (
        f"ledger eps: what the site's ledger recorded for the round (delta {delta:g}); record bound: the upper bound "
        "one image or row is held to (for the client-level filter, twice its sensitivity: one record can move the "
        f"clipped update from one side to the other); proven eps: the attack's lower bound at {confidence:.0%} "
        "confidence; check: ok when lower <= upper (a BUG otherwise)"
    )


def write_audit(result: AuditResult, out: Path) -> dict[str, Path]:
    """Write the audit's files into ``out``; returns their paths by kind."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "audit.json", "markdown": out / "audit.md", "epsilon": epsilon_bars(result, out)}
    if result.pictures is not None:
        files["inversion"] = inversion_figure(result, out)
    files["json"].write_text(json.dumps(result.document(), indent=1))
    files["markdown"].write_text(markdown(result, {k: p.name for k, p in files.items()}))
    return files


def markdown(result: AuditResult, figures: dict[str, str]) -> str:
    lines = [f"# Privacy audit: {result.task} task", "", result.description, ""]
    lines += [markdown_table(header(result), [row_cells(r) for r in result.rows]), ""]
    if result.violations:
        lines += ["## Bugs found", ""] + [f"- {v}" for v in result.violations] + [""]
    else:
        lines += ["No attack proved more than the ledger allows: every lower bound is at most its upper bound.", ""]
    lines += [legend(result) + ".", ""]
    if result.baselines:
        lines += ["Baselines (no update needed): " + ", ".join(f"{k} {v:.3g}" for k, v in result.baselines.items()), ""]
    lines += ["## How it was measured", ""] + [f"- {n}" for n in result.notes] + [""]
    lines += [f"![{kind}]({name})" for kind, name in figures.items() if name.endswith(".png")]
    lines += ["", f"Took {result.seconds:.1f} s."]
    return "\n".join(lines) + "\n"


def epsilon_bars(result: AuditResult, out: Path) -> Path:
    """For each configuration: the ledger's epsilon, the bound for one record and the attack's lower bound."""
    rows = result.rows
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    finite = [v for r in rows for v in (r.ledger_epsilon, r.record_epsilon, r.lower_epsilon) if math.isfinite(v)]
    top = max([*finite, 1.0]) * 1.15
    series = (
        ("ledger epsilon (upper bound)", "ledger_epsilon", "#4c72b0"),
        ("bound for one record", "record_epsilon", "#8fa8d8"),
        ("attack's lower bound", "lower_epsilon", "#dd8452"),
    )
    for i, (name, attribute, colour) in enumerate(series):
        values = [float(getattr(r, attribute)) for r in rows]
        shown = [v if math.isfinite(v) else 0.0 for v in values]
        bars = ax.bar(x + (i - 1) * 0.27, shown, 0.27, label=name, color=colour)
        for bar, value in zip(bars, values, strict=True):
            text = "not DP" if math.isinf(value) else f"{value:.2g}"
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + top * 0.01, text, ha="center", fontsize=7)
    ax.set_xticks(x, [r.config for r in rows])
    ax.set(ylim=(0, top), ylabel="epsilon", title=f"{result.task} task: what the attack proves vs the ledger")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = out / "audit_epsilon.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def inversion_figure(result: AuditResult, out: Path) -> Path:
    """The true image, the attacker's informed start, and the reconstruction under each configuration."""
    assert result.pictures is not None
    pictures = result.pictures
    panels: list[tuple[str, np.ndarray]] = [("true image", pictures.truth)]
    if pictures.prior is not None:
        panels.append(("public-image prior\n(no privacy)", pictures.prior))
    metrics = {r.config: r.metrics for r in result.rows}
    for name, image in pictures.reconstructions.items():
        panels.append((f"{name}\nPSNR {metrics[name]['psnr']:.1f} SSIM {metrics[name]['ssim']:.2f}", image))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.1 * len(panels), 2.6))
    for ax, (title, image) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle("gradient inversion of one site's update (PSNR/SSIM: mean over the inverted trials)", fontsize=9)
    fig.tight_layout()
    path = out / "audit_inversion.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
