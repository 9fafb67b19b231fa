"""``confide privacy audit``: real attacks on what a site really sends, side by side with its ledger's epsilon.

For each privacy configuration (none, the client-level Gaussian filter, DP-SGD, sparsification) the audit runs
real site rounds (:mod:`confide.audit.site`) and attacks the decoded updates:

- image task (:mod:`confide.audit.image`): gradient inversion of one site's update (PSNR and SSIM of the
  reconstruction against the true image) and identification of the image among candidates (an epsilon lower bound);
- table task (:mod:`confide.audit.table`): membership inference on canary rows, one-run auditing (an AUC and an
  epsilon lower bound).

The epsilon an attack proves is a lower bound; the ledger's is an upper bound. A row whose lower bound exceeds the
upper bound is a bug (in the accounting, the mechanism or the audit), and the command says so and fails.
"""

from __future__ import annotations

from pathlib import Path

from confide.audit.data import image_pool, site_rows
from confide.audit.image import run_image_audit
from confide.audit.result import AuditProgress, AuditResult
from confide.audit.settings import AuditSettings
from confide.audit.site import check_configs
from confide.audit.table import run_table_audit
from confide.errors import ConfigError


def run_audit(
    task: str, settings: AuditSettings, *, data: Path | None, out: Path, progress: AuditProgress
) -> AuditResult:
    """Audit ``task`` ("table" or "image") on ``data`` (generated under ``out/data`` when None)."""
    if task not in ("table", "image"):
        raise ConfigError(f"--task must be table or image, got {task!r}")
    check_configs(settings)
    if task == "image":
        return run_image_audit(settings, image_pool(settings, data, out), progress)
    return run_table_audit(settings, site_rows(settings, data, out), progress)
