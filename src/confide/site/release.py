"""What a site sends beside its update, and what it holds back under differential privacy.

Under any DP setting (a filter that spends privacy, or DP-SGD in the task) nothing data-dependent leaves the site
unless a mechanism noised it and the ledger charged it. The fields of a training answer, and what each carries:

============================  ===============================  ==================================================
field                         without DP                       under DP
============================  ===============================  ==================================================
``round``                     the instruction's round          the same (the server's own number)
``update``                    trained minus received           after the privacy chain: noised (and charged)
``num_examples``              the site's training cases        1: updates weigh equally (the count is data)
``metrics``                   training loss and the task's     none: an exact loss describes the patients
``meta["filters"]``           the filters run, in order        the same (the site's configuration)
``meta["filter_params"]``     each filter's parameters         the same (configuration, not data)
``meta["epsilon"|"delta"]``   the ledger's total so far        the same (a function of the configuration)
``meta["dp_clip"]``           --                               the clip norm (configuration)
``meta["dp_noise_std"]``      --                               the noise's standard deviation (configuration)
``meta["shared_fraction"]``   share of entries sent            the same (a function of the configuration)
``meta["sparsify"]``          selection rule                   the same
``meta["svt_epsilon"]``       --                               SVT's epsilon per round (configuration)
``meta["svt_shared"]``        --                               share of entries SVT released (read off the
                                                               released sparse update anyway)
``meta["task_seconds"]``      how long training took           none: timing follows the data's size
============================  ===============================  ==================================================

A sparse update's selection is part of the update: under SVT it is noised and charged; plain sparsification
(``sparsify``) is not differential privacy and sends exact entries (see :mod:`confide.privacy.sparsify`).
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
