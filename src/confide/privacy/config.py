"""The privacy section of a job file, and of a site's own policy file (``privacy.yaml`` in its kit).

A job asks for filters and a budget; a site's policy sets the least privacy it accepts. The site runs the stricter
of the two, point by point (:func:`stricter`): a job can never weaken or remove what a policy requires.

- noise: the larger noise multiplier, the smaller clip; every mechanism either asks for is run;
- placement of client-level noise: ``server`` (central noise, sites only clip) only where the policy itself says
  ``placement: server`` (the site trusts the server) and the job asks for it too; otherwise the site adds its share;
- the share of distributed noise: sized for the policy's ``min_contributors`` (the fewest sites whose noise any
  released sum holds), or the job's where that is smaller; a site whose policy names none adds the full noise
  itself (as if alone), whatever the federation's size. Never a number the server sends at run time;
- budget: epsilon and delta each the smaller of the two;
- secure aggregation: on when either asks.

A simulation has no separate sites: the job is every site's policy (:func:`job_as_policy`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from confide.validation import read_yaml, validate_document


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GaussianSpec(_Strict):
    type: Literal["gaussian"]
    clip: float = Field(gt=0, description="L2 norm each site's update is clipped to (S)")
    noise_multiplier: float = Field(gt=0, description="noise standard deviation over S, on the sum (z)")
    placement: Literal["site", "server"] = "site"


class SparsifySpec(_Strict):
    type: Literal["sparsify"]
    fraction: float = Field(gt=0, le=1, description="share of the update's entries sent")
    select: Literal["topk", "random"] = "topk"


class SvtSpec(_Strict):
    type: Literal["svt"]
    epsilon: float = Field(gt=0, description="epsilon spent per round")
    fraction: float = Field(gt=0, le=1, description="most entries shared, as a share of the update")
    clip: float = Field(gt=0, description="entries are clipped to [-clip, clip]")


FilterSpec = Annotated[GaussianSpec | SparsifySpec | SvtSpec, Field(discriminator="type")]


class DpSgdSpec(_Strict):
    """Patient-level DP: DP-SGD inside each site's local training."""

    noise_multiplier: float = Field(gt=0, description="noise standard deviation over the clip norm (sigma)")
    clip: float = Field(gt=0, description="L2 norm each case's gradient is clipped to (C)")


class BudgetSpec(_Strict):
    epsilon: float = Field(gt=0, description="most epsilon a site spends over the whole job")
    delta: float = Field(default=1e-5, gt=0, lt=1)


class PrivacyConfig(_Strict):
    filters: list[FilterSpec] = Field(default_factory=list, description="run at each site, in this order")
    dp_sgd: DpSgdSpec | None = None
    budget: BudgetSpec | None = None
    missing: Literal["reported", "zero"] = Field(
        default="reported", description="how the server reads an entry a sparse update left out"
    )
    secure_aggregation: bool = False
    min_contributors: int | None = Field(
        default=None,
        ge=1,
        description="fewest sites whose noise any released sum holds: a site's share of distributed noise is sized "
        "for it (a policy without it makes each site add the full noise)",
    )

    @model_validator(mode="after")
    def _combinations(self) -> PrivacyConfig:
        kinds = [f.type for f in self.filters]
        for kind in set(kinds):
            if kinds.count(kind) > 1:
                raise ValueError(f"filter {kind!r} appears {kinds.count(kind)} times; give it once")
        if "gaussian" in kinds and any(k in kinds[: kinds.index("gaussian")] for k in ("sparsify", "svt")):
            raise ValueError(
                "the gaussian filter must come before sparsify and svt: noise added after choosing entries "
                "leaves the choice itself un-noised"
            )
        if self.secure_aggregation and any(k in kinds for k in ("sparsify", "svt")):
            raise ValueError(
                "secure aggregation cannot carry sparse updates: each site's mask covers every entry, so a "
                "sparse update would have to be sent dense (drop sparsify/svt, or secure aggregation)"
            )
        gaussian = self.gaussian
        if self.secure_aggregation and gaussian is not None and gaussian.placement == "server":
            raise ValueError(
                "secure aggregation hides single updates from the server, which central noise (placement: server) "
                "needs to clip them: add the noise at the sites (placement: site)"
            )
        if self.budget is not None and not self.spends:
            raise ValueError("a privacy budget needs a mechanism that spends it (gaussian, svt or dp_sgd)")
        return self

    @property
    def spends(self) -> bool:
        """Whether any configured mechanism spends privacy (sparsification does not)."""
        return self.dp_sgd is not None or any(isinstance(f, GaussianSpec | SvtSpec) for f in self.filters)

    @property
    def gaussian(self) -> GaussianSpec | None:
        return next((f for f in self.filters if isinstance(f, GaussianSpec)), None)


def job_as_policy(job: PrivacyConfig, min_sites: int) -> PrivacyConfig:
    """In a simulation every site is the job's operator: its policy is the job's privacy, with the job's quorum as
    the fewest contributors to a sum when the job names none."""
    if job.min_contributors is not None:
        return job
    return job.model_copy(update={"min_contributors": max(1, min_sites)})


def _merge_gaussian(policy: GaussianSpec | None, job: GaussianSpec | None) -> GaussianSpec | None:
    if policy is None and job is None:
        return None
    specs = [s for s in (policy, job) if s is not None]
    trusted = policy is not None and policy.placement == "server" and (job is None or job.placement == "server")
    return GaussianSpec(
        type="gaussian",
        clip=min(s.clip for s in specs),
        noise_multiplier=max(s.noise_multiplier for s in specs),
        placement="server" if trusted else "site",
    )


def stricter(job: PrivacyConfig, policy: PrivacyConfig | None) -> PrivacyConfig:
    """What a site runs: the job's privacy, never weaker than the site's ``policy`` on any point. A site without a
    policy file has the empty policy: it trusts the server with nothing and counts on no other site's noise."""
    policy = policy if policy is not None else PrivacyConfig()
    mine = {f.type: f for f in policy.filters}
    theirs = {f.type: f for f in job.filters}
    merged: list[GaussianSpec | SparsifySpec | SvtSpec] = []
    secure = job.secure_aggregation or policy.secure_aggregation
    gaussian = _merge_gaussian(policy.gaussian, job.gaussian)
    if gaussian is not None and secure:  # the server sees no single update to noise: the site adds its share
        gaussian = gaussian.model_copy(update={"placement": "site"})
    if gaussian is not None:
        merged.append(gaussian)  # noise first, then the choice of entries
    for kind in ("svt", "sparsify"):
        a, b = mine.get(kind), theirs.get(kind)
        if a is None or b is None:
            if a is not None or b is not None:
                merged.append(a or b)  # type: ignore[arg-type]
            continue
        if isinstance(a, SvtSpec) and isinstance(b, SvtSpec):
            merged.append(
                a.model_copy(
                    update={
                        "epsilon": min(a.epsilon, b.epsilon),
                        "fraction": min(a.fraction, b.fraction),
                        "clip": min(a.clip, b.clip),
                    }
                )
            )
        elif isinstance(a, SparsifySpec) and isinstance(b, SparsifySpec):
            merged.append(a.model_copy(update={"fraction": min(a.fraction, b.fraction)}))
    budgets = [b for b in (job.budget, policy.budget) if b is not None]
    budget = (
        BudgetSpec(epsilon=min(b.epsilon for b in budgets), delta=min(b.delta for b in budgets)) if budgets else None
    )
    dp_sgd = policy.dp_sgd or job.dp_sgd
    if policy.dp_sgd is not None and job.dp_sgd is not None:
        dp_sgd = DpSgdSpec(
            noise_multiplier=max(policy.dp_sgd.noise_multiplier, job.dp_sgd.noise_multiplier),
            clip=min(policy.dp_sgd.clip, job.dp_sgd.clip),
        )
    counts = [n for n in (policy.min_contributors, job.min_contributors) if n is not None]
    contributors = min(counts) if policy.min_contributors is not None else 1
    return PrivacyConfig(
        filters=merged,
        dp_sgd=dp_sgd,
        budget=budget,
        missing=job.missing,
        secure_aggregation=secure,
        min_contributors=contributors,
    )


def load_policy(kit: Path) -> PrivacyConfig | None:
    """A site's own privacy policy, ``privacy.yaml`` in its kit, or ``None`` when it has none."""

    path = kit / "privacy.yaml"
    if not path.exists():
        return None
    return validate_document(read_yaml(path, "privacy policy"), PrivacyConfig, source=str(path), what="privacy policy")
