from __future__ import annotations

import math

import numpy as np
import pytest

from confide.audit.result import AuditResult, AuditRow
from confide.privacy.audit_bounds import (
    auc,
    best_one_run_epsilon,
    clopper_pearson_lower,
    identification_epsilon,
    identification_limit,
    one_run_epsilon,
    one_run_p_value,
    top_bottom_guesses,
    violation,
)
from confide.privacy.audit_similarity import psnr, ssim


def _row(lower: float, record: float) -> AuditRow:
    return AuditRow("dp-sgd", "DP-SGD", record, record, lower, "membership", {"auc": 0.9}, "fabricated")


def test_perfect_guesses_prove_an_epsilon_that_grows_with_their_number() -> None:
    few = one_run_epsilon(1000, 20, 20, 1e-5)
    many = one_run_epsilon(1000, 200, 200, 1e-5)

    assert 1.0 < few < many
    # all r guesses right happens with probability q^r under eps-DP randomised response: at the bound it is 5 %
    q = 1 / (1 + math.exp(-one_run_epsilon(1000, 100, 100, 0.0)))
    assert q**100 == pytest.approx(0.05, rel=1e-3)


def test_guesses_at_chance_prove_nothing_and_delta_only_weakens_the_bound() -> None:
    assert one_run_epsilon(1000, 100, 50, 1e-5) == 0.0
    assert one_run_p_value(1000, 100, 80, 1.0, 1e-3) > one_run_p_value(1000, 100, 80, 1.0, 0.0)
    assert one_run_epsilon(1000, 100, 90, 1e-3) < one_run_epsilon(1000, 100, 90, 0.0)


def test_trying_several_guess_counts_pays_for_it() -> None:
    assert one_run_epsilon(500, 50, 48, 1e-5, tests=5) < one_run_epsilon(500, 50, 48, 1e-5)


def test_top_and_bottom_guesses_count_what_is_right() -> None:
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.5, 0.7])
    included = np.array([True, False, False, False, True, True])

    guessed = top_bottom_guesses(scores, included, 2, 2)  # in: 0.9, 0.8; out: 0.1, 0.2

    assert (guessed.guesses, guessed.correct) == (4, 3)
    eps, best = best_one_run_epsilon(scores, included, 1e-5, counts=(1, 2, 3, 99))
    assert eps == 0.0 and best.guesses in (2, 4, 6)


def test_identification_at_chance_proves_nothing_and_certainty_proves_much() -> None:
    assert identification_limit(8, 0.0, 0.0) == pytest.approx(1 / 8)
    assert identification_epsilon(3, 24, 8, 1e-5) == 0.0
    perfect = identification_epsilon(24, 24, 8, 1e-5)
    # the proven epsilon, doubled for replacement, puts the success limit at the 95 % lower confidence limit
    assert identification_limit(8, 2 * perfect, (1 + math.exp(perfect)) * 1e-5) == pytest.approx(
        clopper_pearson_lower(24, 24), rel=1e-6
    )
    assert 1.5 < perfect < 2.5


def test_auc_of_separated_scores_is_one_and_of_ties_one_half() -> None:
    assert auc(np.array([3.0, 4.0, 1.0, 2.0]), np.array([True, True, False, False])) == 1.0
    assert auc(np.ones(6), np.array([True, False] * 3)) == 0.5


def test_a_lower_bound_above_the_ledger_is_flagged_as_a_bug() -> None:
    fabricated = _row(lower=3.0, record=1.0)
    honest = _row(lower=0.4, record=1.0)
    result = AuditResult("table", "test", (honest, fabricated), (), {}, 0.0)

    assert violation("x", 1.0, math.inf) is None
    assert honest.violation is None
    assert fabricated.violation is not None and "bug" in fabricated.violation
    assert result.violations == [fabricated.violation]
    assert result.document()["rows"][1]["violation"] == fabricated.violation


def test_psnr_and_ssim_of_identical_noisy_and_unrelated_images() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((16, 16))
    noisy = np.clip(image + rng.normal(0, 0.05, image.shape), 0, 1)

    assert psnr(image, image) == math.inf and ssim(image, image) == pytest.approx(1.0)
    assert psnr(noisy, image) == pytest.approx(26.0, abs=1.5)
    assert ssim(noisy, image) > 0.9 > 0.2 > abs(ssim(rng.random((16, 16)), image))
    with pytest.raises(ValueError, match="one 2-D shape"):
        psnr(image, image[:8])
