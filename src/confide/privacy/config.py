"""The privacy section of a job file, and of a site's own policy file (``privacy.yaml`` in its kit).

A job asks for filters and a budget; a site's policy sets the least privacy it accepts. The site runs the stricter
of the two for every mechanism and the smaller budget: a job can never weaken or remove what a policy requires.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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


def stricter(job: PrivacyConfig, policy: PrivacyConfig | None) -> PrivacyConfig:
    """What a site runs: the job's privacy, never weaker than the site's ``policy`` on any point."""
    if policy is None:
        return job
    mine = {f.type: f for f in policy.filters}
    theirs = {f.type: f for f in job.filters}
    merged: list[GaussianSpec | SparsifySpec | SvtSpec] = []
    for kind in ("gaussian", "svt", "sparsify"):  # noise first, then the choice of entries
        a, b = mine.get(kind), theirs.get(kind)
        if a is None or b is None:
            if a is not None or b is not None:
                merged.append(a or b)  # type: ignore[arg-type]
            continue
        if isinstance(a, GaussianSpec) and isinstance(b, GaussianSpec):
            merged.append(
                a.model_copy(
                    update={
                        "clip": min(a.clip, b.clip),
                        "noise_multiplier": max(a.noise_multiplier, b.noise_multiplier),
                    }
                )
            )
        elif isinstance(a, SvtSpec) and isinstance(b, SvtSpec):
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
    budget = min(budgets, key=lambda b: (b.epsilon, b.delta)) if budgets else None
    secure = job.secure_aggregation or policy.secure_aggregation
    dp_sgd = policy.dp_sgd or job.dp_sgd
    if policy.dp_sgd is not None and job.dp_sgd is not None:
        dp_sgd = DpSgdSpec(
            noise_multiplier=max(policy.dp_sgd.noise_multiplier, job.dp_sgd.noise_multiplier),
            clip=min(policy.dp_sgd.clip, job.dp_sgd.clip),
        )
    return PrivacyConfig(filters=merged, dp_sgd=dp_sgd, budget=budget, missing=job.missing, secure_aggregation=secure)


def load_policy(kit: Path) -> PrivacyConfig | None:
    """A site's own privacy policy, ``privacy.yaml`` in its kit, or ``None`` when it has none."""
    from confide.config import read_yaml, validate_document  # the job file's module imports this one

    path = kit / "privacy.yaml"
    if not path.exists():
        return None
    return validate_document(read_yaml(path, "privacy policy"), PrivacyConfig, source=str(path), what="privacy policy")
