"""What a site sends beside its update, and what it holds back under differential privacy.

Under any DP setting (a filter that spends privacy, or DP-SGD in the task) nothing data-dependent leaves the site
unless a mechanism noised it and the ledger charged it: the noised update, the keys of :data:`RELEASED_META`
(how the site protected it), a count of 1 (updates weigh equally) and no metrics. DESIGN.md ("What a site sends")
tables every field with and without DP; ``tests/site/test_release.py`` holds that table to these sets.
Evaluation requests are refused under DP: exact metrics on a site's patients would leave unaccounted.
"""

from __future__ import annotations

from dataclasses import replace

from confide.records import TrainRes

RELEASED_META = frozenset(
    {
        "filters",
        "filter_params",
        "epsilon",
        "delta",
        "dp_clip",
        "dp_noise_std",
        "shared_fraction",
        "sparsify",
        "svt_epsilon",
        "svt_shared",
    }
)
"""Meta keys a differentially private update carries: how the site protected it, never what it holds."""

PLAIN_META = RELEASED_META | {"task_seconds"}
"""Meta keys an update without DP carries."""

DP_EVALUATION_REFUSAL = (
    "it trains under differential privacy and does not release exact evaluation metrics on its patients "
    "(federated evaluation is refused under DP; each site scores the final model itself)"
)


def release(res: TrainRes, *, private: bool) -> TrainRes:
    """The answer as it may leave the site: under DP only the noised update and :data:`RELEASED_META`."""
    if not private:
        return replace(res, meta={k: v for k, v in res.meta.items() if k in PLAIN_META})
    meta = {k: v for k, v in res.meta.items() if k in RELEASED_META}
    return TrainRes(round=res.round, update=res.update, num_examples=1, metrics={}, meta=meta)
