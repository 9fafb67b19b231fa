"""The server learning rate of FedAdam, FedYogi and FedAdagrad, measured on shipped jobs.

For each job file, server optimiser, rate and seed, the job runs its federated model alone (no baselines, no
fine-tuning) and the script prints the headline metric (mean over the sites' test splits) of the initial model and
of the final one, and how far the final model moved from the initial one (L2 distance over the model's floating-point
arrays, relative to their initial norm). FedAvg is run once per seed as the reference the server optimiser should
reach. Written to OUT/server_lr.md.

    .venv/bin/python bench/server_lr.py jobs/heart_disease.yaml \\
        --data ../shared/data/heart_disease/heart_disease_uci.csv --seeds 0 1 2
    .venv/bin/python bench/server_lr.py jobs/histo_slides.yaml --seeds 0
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from confide.config import JobConfig, load_job  # noqa: E402
from confide.errors import ConfideError  # noqa: E402
from confide.experiment import Evaluator, run_job  # noqa: E402
from confide.job_plan import initial_global  # noqa: E402
from confide.records import Arrays  # noqa: E402
from confide.report.progress import ProgressDisplay  # noqa: E402
from confide.tasks.local_rules import model_part  # noqa: E402
from confide.workloads.registry import make_workload  # noqa: E402

OPTIMISERS = ("fedadagrad", "fedadam", "fedyogi")
RATES = (0.01, 0.03, 0.1, 0.3, 1.0)


def _variant(job: JobConfig, out: Path, seed: int, strategy: str, lr: float | None, data: str | None) -> JobConfig:
    document: dict[str, Any] = job.model_dump(mode="json")
    document["seed"] = seed
    document["compare"] = []
    document["finetune"] = {"steps": 0}
    document["report"] = {"out": str(out), "plots": False}
    document["federation"]["strategy"] = strategy
    document["federation"]["server_lr"] = lr
    if data is not None:
        document["data"]["root"] = data
    return JobConfig.model_validate(document)


def _distance(final: Arrays, start: Arrays) -> float:
    """How far the floating-point arrays moved, relative to their initial norm (counters such as BatchNorm's
    num_batches_tracked left out: they count steps, and the server optimiser does not move them)."""
    names = [k for k in final.names() if np.issubdtype(final[k].dtype, np.floating)]
    moved = sum(float(np.sum((final[k].astype(np.float64) - start[k]) ** 2)) for k in names)
    size = sum(float(np.sum(start[k].astype(np.float64) ** 2)) for k in names)
    return float(np.sqrt(moved / size)) if size else float(np.sqrt(moved))


def _initial(job: JobConfig, display: ProgressDisplay) -> tuple[float, Arrays, str]:
    """The initial model's headline metric, the model, and the metric's name."""
    workload = make_workload(job.task)
    sites = workload.load_sites(job.data, job.seed, display.status)
    start = model_part(initial_global(job, workload))
    evaluator = Evaluator(workload, {s.name: s.test for s in sites}, job.seed)
    return evaluator.all_sites(lambda _site: start)[workload.metric], start, workload.metric


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", type=Path)
    parser.add_argument("--data", help="the job's data.root, when not where the job file says")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rates", type=float, nargs="+", default=list(RATES))
    parser.add_argument("--optimisers", nargs="+", default=list(OPTIMISERS))
    parser.add_argument("--no-fedavg", action="store_true", help="leave out the FedAvg reference run")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-server-lr")
    args = parser.parse_args()
    base = load_job(args.job)
    display = ProgressDisplay(enabled=False)
    lines = [f"# Server learning rate: {args.job}", "", "| strategy | server_lr | seed | initial | final | moved |"]
    lines.append("|---|---|---|---|---|---|")
    summary: dict[tuple[str, float | None], list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            first = _variant(base, Path(scratch), seed, "fedavg", None, args.data)
            initial, start, metric = _initial(first, display)
            runs: list[tuple[str, float | None]] = [] if args.no_fedavg else [("fedavg", None)]
            runs += [(o, r) for o in args.optimisers for r in args.rates]
            for strategy, lr in runs:
                job = _variant(base, Path(scratch), seed, strategy, lr, args.data)
                row = f"| {strategy} | {lr if lr is not None else '-'} | {seed} | {initial:.3f} | "
                try:
                    result = run_job(job, display)
                except ConfideError as exc:  # a rate that drives the job into the server's checks is a result
                    summary.setdefault((strategy, lr), []).append(float("nan"))
                    lines.append(row + f"failed: {str(exc).split(';')[0]} | - |")
                    print(lines[-1], flush=True)
                    continue
                final = result.cross[result.federated]["all"][metric]
                run = next(r for r in result.runs if r.kind == "federated")
                assert run.arrays is not None
                moved = _distance(run.arrays, start)
                summary.setdefault((strategy, lr), []).append(final)
                lines.append(row + f"{final:.3f} | {moved:.3f} |")
                print(lines[-1], flush=True)
    lines += ["", f"Mean over seeds {args.seeds} of the final {metric} (nan: a run failed):", ""]
    lines += ["| strategy | server_lr | mean | sd |", "|---|---|---|---|"]
    for (strategy, lr), values in summary.items():
        lr_text = lr if lr is not None else "-"
        lines.append(f"| {strategy} | {lr_text} | {np.mean(values):.3f} | {np.std(values):.3f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "server_lr.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(summary) - 2 :]))


if __name__ == "__main__":
    main()
