"""The image audit on generated mammograms: gradient inversion and identification of one site's real update."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import confide.privacy.filter
from confide.audit.data import image_pool
from confide.audit.image import run_image_audit
from confide.audit.result import AuditResult, Silent
from confide.audit.run import run_audit
from confide.audit.settings import quick


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> AuditResult:
    settings = quick(seed=1)
    # eight inversions, not four: the mean SSIM of four noised reconstructions ranged from -0.37 to 0.50 over six
    # runs; of eight, from -0.15 to 0.15 over five
    settings = replace(settings, configs=("none", "gaussian"), image=replace(settings.image, trials=8, inversions=8))
    # The gaussian filter's noise is secret (a generator keyed from os.urandom), so each run differed: over 38 runs
    # the noised PSNR was 11.7 +- 1.2 dB against a bound of 14.35 (2.2 sigma), the SSIM 0.15 +- 0.16 against 0.45
    # (1.9 sigma), and one run failed both; at chance, identifying 5 or more of 8 comes once in about 1,000 runs.
    # Here, in this test only, the filter draws from a seeded generator (a fresh key per update, as deployed): the
    # product's noise stays secret, and the run is one typical draw of it, the same in every run.
    keys = itertools.count()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(confide.privacy.filter, "secret_generator", lambda: np.random.default_rng([8, next(keys)]))
        return run_audit("image", settings, data=None, out=tmp_path_factory.mktemp("audit"), progress=Silent())


def test_without_a_filter_the_update_gives_the_image_away(audited: AuditResult) -> None:
    plain = {r.config: r for r in audited.rows}["none"]
    base = audited.baselines

    assert plain.metrics["psnr"] > base["mean_psnr"] + 3.0  # better than the mean image, which needs no update
    assert plain.metrics["psnr"] > base["random_psnr"] + 4.0
    assert plain.metrics["ssim"] > base["mean_ssim"] + 0.2
    assert plain.metrics["identified"] >= 7 / 8 and plain.metrics["label_right"] == 1.0
    assert plain.lower_epsilon > 1.0 and plain.violation is None


def test_the_gaussian_filter_at_a_real_noise_level_leaves_the_attack_at_chance(audited: AuditResult) -> None:
    rows = {r.config: r for r in audited.rows}
    noised, plain = rows["gaussian"], rows["none"]

    assert noised.metrics["psnr"] < plain.metrics["psnr"] - 2.0
    assert noised.metrics["ssim"] < plain.metrics["ssim"] - 0.2
    assert noised.metrics["identified"] <= 0.5
    assert noised.ledger_epsilon < noised.record_epsilon < 20  # one record may move the clipped update by 2 clips
    assert noised.lower_epsilon <= noised.record_epsilon and not audited.violations


def test_the_pool_is_read_through_the_workload_from_generated_files(tmp_path: Path) -> None:
    settings = quick(seed=3)
    settings = replace(settings, configs=("dp-sgd",), image=replace(settings.image, public=12, trials=2, inversions=1))

    pool = image_pool(settings, None, tmp_path)
    result = run_image_audit(settings, pool, Silent())

    assert len(pool.images) == 12 and len(list((tmp_path / "data" / "mammograms" / "site-1").glob("*.png"))) == 12
    (row,) = result.rows
    assert row.ledger_epsilon == pytest.approx(row.record_epsilon) and 0 < row.ledger_epsilon < 10
    assert result.pictures is not None and set(result.pictures.reconstructions) == {"dp-sgd"}


def test_real_mammograms_can_be_audited(shared_data: Path, tmp_path: Path) -> None:
    mias = shared_data / "mias"
    if not (mias / "Info.txt").is_file():
        pytest.skip(f"mini-MIAS not found at {mias}")
    settings = quick(seed=0)
    settings = replace(settings, configs=("none",), image=replace(settings.image, trials=3, inversions=1))

    result = run_audit("image", settings, data=mias, out=tmp_path, progress=Silent())

    (row,) = result.rows
    assert "images under" in result.notes[0] and row.metrics["identified"] == 1.0
    assert row.metrics["psnr"] > result.baselines["mean_psnr"]
