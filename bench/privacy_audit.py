"""The privacy audit half of bench/privacy_utility.py: real attacks on what a site sends, beside the ledger.

Runs ``confide privacy audit`` for the table task (on the UCI heart-disease CSV when present, else a generated
table) and the image task (on mini-MIAS when present, else generated mammograms), and writes each audit's
``audit.md``, ``audit.json`` and figures under ``OUT/audit/table`` and ``OUT/audit/image``, plus a one-table summary
``OUT/audit/summary.md``.

    .venv/bin/python bench/privacy_audit.py [--out runs/privacy_utility] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from confide.audit.report import row_cells, write_audit
from confide.audit.result import AuditResult
from confide.audit.run import run_audit
from confide.audit.settings import full, quick
from confide.report.progress import ProgressDisplay
from confide.report.tables import markdown_table

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def run_audits(out: Path, *, table: Path | None, images: Path | None, is_quick: bool, seed: int = 0) -> bool:
    """Both audits; True when no row proved more epsilon than its ledger allows."""
    settings = quick(seed) if is_quick else full(seed)
    results: list[AuditResult] = []
    for task, data in (("table", table), ("image", images)):
        folder = out / "audit" / task
        used = data if data is not None and data.exists() else None
        print(f"\nprivacy audit, {task} task, on {used or 'generated data'}")
        with ProgressDisplay() as display:
            result = run_audit(task, settings, data=used, out=folder, progress=display)
        write_audit(result, folder)
        results.append(result)
        for row in result.rows:
            print("  " + " | ".join(row_cells(row)))
    header = ["task", "configuration", "ledger eps", "record bound", "attack", "proven eps", "check"]
    body = [[r.task, *row_cells(row)] for r in results for row in r.rows]
    (out / "audit" / "summary.md").write_text(markdown_table(header, body) + "\n")
    print(f"wrote {out / 'audit' / 'summary.md'}")
    bugs = [v for r in results for v in r.violations]
    for bug in bugs:
        print(f"BUG: {bug}")
    return not bugs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/privacy_utility"))
    parser.add_argument("--quick", action="store_true", help="CI-sized samples (seconds) instead of the full ones")
    parser.add_argument("--table", type=Path, default=SHARED / "heart_disease" / "heart_disease_uci.csv")
    parser.add_argument("--images", type=Path, default=SHARED / "mias")
    args = parser.parse_args()
    if not run_audits(args.out, table=args.table, images=args.images, is_quick=args.quick):
        sys.exit(1)


if __name__ == "__main__":
    main()
