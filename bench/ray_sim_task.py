"""A task for many simulated sites (bench/ray_sim.py): every site's rows generated from the job's seed and the
site's number, so no file is read and any number of sites costs nothing to prepare.

Each site draws ``rows`` patients with ``features`` numeric features, shifted by a site-specific offset (sites
differ as hospitals do), labelled by one logistic model shared by all sites. The network is a small MLP.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from confide.api import Place, SiteData, TaskKind, split_indices


class Fields(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sites: int = Field(default=100, ge=1, le=100_000, description="how many sites the federation has")
    rows: int = Field(default=40, ge=4, description="patients per site")
    features: int = Field(default=16, ge=1)
    hidden: int = Field(default=16, ge=1)


def site_names(fields: Fields, root: object) -> list[str]:
    return [f"site-{i:05d}" for i in range(1, fields.sites + 1)]


def read_site(fields: Fields, place: Place) -> SiteData:
    number = int(place.site.rsplit("-", 1)[1])
    weights = np.random.default_rng([place.seed, 0]).normal(size=fields.features)
    rng = np.random.default_rng([place.seed, number])
    x = rng.normal(size=(fields.rows, fields.features)) + rng.normal(0.0, 0.5, size=fields.features)
    y = (x @ weights + rng.normal(0.0, 1.0, size=fields.rows) > 0).astype(np.int64)
    split = split_indices(fields.rows, place.test_fraction, place.seed, labels=y.tolist())
    xs, ys = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)
    train = torch.from_numpy(split.train)
    test = torch.from_numpy(split.test)
    return SiteData(
        train=torch.utils.data.TensorDataset(xs[train], ys[train]),
        test=torch.utils.data.TensorDataset(xs[test], ys[test]),
    )


def build_model(fields: Fields) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(fields.features, fields.hidden), torch.nn.ReLU(), torch.nn.Linear(fields.hidden, 2)
    )


def evaluate(fields: Fields, model: torch.nn.Module, data: torch.utils.data.TensorDataset) -> dict[str, float]:
    x, y = data.tensors
    return {"accuracy": float((model(x).argmax(dim=1) == y).float().mean())}


task = TaskKind(
    fields=Fields,
    read_site=read_site,
    build_model=build_model,
    evaluate=evaluate,
    metrics=("accuracy",),
    sites=site_names,
    describe="generated rows, many sites (bench/ray_sim.py)",
)
