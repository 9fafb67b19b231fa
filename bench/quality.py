"""Model quality of every strategy against local-only and pooled training, on three federations.

For each dataset (the four-hospital heart-disease table, the MIAS density split across sites, the brain-tumour
phantoms) and each seed, it runs the dataset's job with FedAvg and the baselines (local-only per site, pooled,
and each site's fine-tuned federated model), then the same job with FedProx, FedAdam, FedYogi, SCAFFOLD and FedBN.
Every model is scored with the task's metric on every site's test split:

- ``local (own site)``: each site's local-only model on its own test split, averaged over the sites;
- ``local:<site>``: that site's local-only model on every site's test split;
- ``finetuned (own site)``: each site's fine-tuned federated model on its own test split;
- the others: the model (as each site uses it, under FedBN) on every site's test split.

Printed and written to OUT/quality.md with OUT/quality.png: per model, the mean over the sites' test splits, the
spread over the sites, and (with several seeds) the spread of that mean over the seeds.

    .venv/bin/python bench/quality.py                       # all three, heart disease with 5 seeds
    .venv/bin/python bench/quality.py --datasets heart_disease --seeds 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from confide.config import parse_job  # noqa: E402
from confide.experiment import JobResult, run_job  # noqa: E402
from confide.report.progress import ProgressDisplay  # noqa: E402

DATA = Path(ROOT.parent / "shared" / "data")
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "scaffold", "fedbn")


def _job(name: str, seed: int, out: Path, task: dict[str, Any], data: dict[str, Any], **fed: Any) -> dict[str, Any]:
    return {
        "name": f"quality-{name}",
        "seed": seed,
        "task": task,
        "data": data,
        "federation": fed,
        "report": {"out": str(out), "plots": False},
    }


def heart_job(seed: int, data: Path, out: Path) -> dict[str, Any]:
    task = {
        "name": "table",
        "site_column": "dataset",
        "target": "num",
        "kind": "binary",
        "positive_above": 0,
        "drop": ["id", "slope", "ca", "thal"],
        "missing": "drop",
        "model": "mlp",
        "hidden": 16,
        "norm": "batch",
        "lr": 0.01,
        "batch_size": 16,
    }
    table = {"root": str(data / "heart_disease" / "heart_disease_uci.csv"), "test_fraction": 1 / 3}
    return _job(
        "heart-disease", seed, out, task, table, rounds=20, local_steps=10, min_sites=4, server_lr=0.01, proximal_mu=0.1
    )


def mias_job(seed: int, data: Path, out: Path) -> dict[str, Any]:
    task = {  # as jobs/mias_density.yaml (the mammo_density preset with width 8, norm group, lr 0.002)
        "name": "image_classification",
        "classes": ["F", "G", "D"],
        "ordinal": True,
        "image_size": 64,
        "width": 8,
        "blocks": 4,
        "norm": "group",
        "intensity": "raw",
        "augmentation": "flip_batch_shift",
        "class_weighted": True,
        "storage": "float32",
        "lr": 0.002,
        "mias": {"sites": 3},
    }
    images = {"root": str(data / "mias"), "test_fraction": 0.25}
    return _job(
        "mias", seed, out, task, images, rounds=20, local_steps=10, min_sites=3, server_lr=0.003, proximal_mu=0.01
    )


def phantom_job(seed: int, data: Path, out: Path) -> dict[str, Any]:
    task = {"roi": [24, 24, 24], "init_filters": 8, "lr": 0.003}
    cases = {"root": str(out.parent / "phantom-data"), "phantoms": {"sites": 4, "cases": 12}}
    return _job(
        "phantoms", seed, out, task, cases, rounds=15, local_steps=10, min_sites=4, server_lr=0.003, proximal_mu=0.01
    )


# fine-tuning at each site: the default (one round's steps at a quarter of the task's rate), but at the task's own
# rate on the heart-disease table, whose hospitals' prevalence differs by more than a few small steps can move
FINETUNE: dict[str, dict[str, Any]] = {"heart_disease": {"lr": 0.01}}

DATASETS: dict[str, tuple[Callable[[int, Path, Path], dict[str, Any]], int]] = {
    "heart_disease": (heart_job, 5),
    "mias": (mias_job, 3),
    "phantoms": (phantom_job, 1),
}


def scores(result: JobResult) -> dict[str, tuple[float, float]]:
    """Model -> (mean over the sites' test splits, spread over the sites) of the task's metric."""
    metric, cross = result.metric, result.cross
    sites = [s.name for s in result.sites]
    out: dict[str, tuple[float, float]] = {}
    own_local = [cross[f"local:{s}"][s][metric] for s in sites if f"local:{s}" in cross]
    if own_local:
        out["local (own site)"] = (float(np.mean(own_local)), float(np.std(own_local)))
    for model, per_site in cross.items():
        if model.startswith("finetuned:"):
            continue
        values = [per_site[s][metric] for s in sites]
        out[model] = (float(np.mean(values)), float(np.std(values)))
    tuned = [cross[f"finetuned:{s}"][s][metric] for s in sites if f"finetuned:{s}" in cross]
    if tuned:
        out["finetuned (own site)"] = (float(np.mean(tuned)), float(np.std(tuned)))
    return out


def run_dataset(name: str, seeds: int, data: Path, out: Path) -> tuple[str, dict[str, list[tuple[float, float]]]]:
    make, _ = DATASETS[name]
    table: dict[str, list[tuple[float, float]]] = {}
    metric = ""
    for seed in range(seeds):
        for strategy in STRATEGIES:
            document = make(seed, data, out / name / f"seed{seed}-{strategy}")
            document["federation"]["strategy"] = strategy
            if strategy == "fedavg":
                document["compare"] = ["local", "pooled"]
                document["finetune"] = FINETUNE.get(name, {})
            else:
                document["finetune"] = {"steps": 0}
            job = parse_job(document, source=f"{name} {strategy}")
            t0 = time.perf_counter()
            result = run_job(job, ProgressDisplay(enabled=False))
            metric = result.metric
            for model, value in scores(result).items():
                table.setdefault(model, []).append(value)
            fed = scores(result)[strategy][0]
            print(
                f"  {name} seed {seed} {strategy:<9} {metric} {fed:.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True
            )
    return metric, table


def summarise(table: dict[str, list[tuple[float, float]]]) -> list[tuple[str, float, float, float]]:
    """(model, mean over seeds of the across-site mean, mean spread over sites, spread over seeds)."""
    rows = []
    for model, values in table.items():
        means = np.array([v[0] for v in values])
        rows.append((model, float(means.mean()), float(np.mean([v[1] for v in values])), float(means.std())))
    return rows


def write(out: Path, results: dict[str, tuple[str, int, list[tuple[str, float, float, float]]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(results, indent=1))
    lines = ["# Model quality: strategies against local-only and pooled training", ""]
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.8), squeeze=False)
    for ax, (name, (metric, seeds, rows)) in zip(axes[0], results.items(), strict=True):
        lines += [
            f"## {name} ({metric}, {seeds} seed{'s' if seeds > 1 else ''})",
            "",
            "| model | mean over sites' test splits | spread over sites | spread over seeds |",
            "|---|---|---|---|",
        ]
        lines += [f"| {m} | {mean:.3f} | {site_sd:.3f} | {seed_sd:.3f} |" for m, mean, site_sd, seed_sd in rows]
        lines.append("")
        labels = [r[0] for r in rows]
        colours = [
            "tab:gray" if m.startswith("local") else "tab:orange" if m == "pooled" else "tab:blue" for m in labels
        ]
        ax.barh(range(len(rows)), [r[1] for r in rows], xerr=[r[2] for r in rows], color=colours, alpha=0.85)
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set(title=f"{name}: {metric.replace('_', ' ')}", xlabel="mean over sites (bar: spread over sites)")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "quality.png", dpi=110)
    plt.close(fig)
    lines += ["![quality](quality.png)", ""]
    (out / "quality.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument(
        "--seeds", type=int, default=None, help="seeds per dataset (default: 5 heart disease, 3 MIAS, 1 phantoms)"
    )
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder (mias/, heart_disease/)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "quality")
    args = parser.parse_args()
    results: dict[str, tuple[str, int, list[tuple[str, float, float, float]]]] = {}
    for name in args.datasets:
        if (
            name in ("heart_disease", "mias")
            and not (args.data / ("mias" if name == "mias" else "heart_disease")).exists()
        ):
            print(f"skipping {name}: no data under {args.data}")
            continue
        seeds = args.seeds or DATASETS[name][1]
        metric, table = run_dataset(name, seeds, args.data, args.out)
        rows = summarise(table)
        results[name] = (metric, seeds, rows)
        print(f"\n{name} ({metric}, {seeds} seed(s))")
        print(f"{'model':<26} {'mean':>7} {'sd sites':>9} {'sd seeds':>9}")
        for model, mean, site_sd, seed_sd in rows:
            print(f"{model:<26} {mean:>7.3f} {site_sd:>9.3f} {seed_sd:>9.3f}")
        write(args.out, results)
    print(f"\nwritten: {args.out / 'quality.md'} and quality.png")


if __name__ == "__main__":
    main()
