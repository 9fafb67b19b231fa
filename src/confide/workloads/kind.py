"""A task written on the public API (:class:`confide.api.TaskKind`) as a workload: what the experiment, the
deployment and the reports use. A user's task (``task.name: python``, loaded from its entry point) and a built-in
kind written on the API (``image_classification``) both run through :class:`KindWorkload`.

Training goes through the shared loop (:mod:`confide.tasks.loop`), so FedProx, SCAFFOLD, FedBN and DP-SGD work for
every task. Torch's global generator is seeded from the job's seed, the site and the round around every call into
the task's code (building the model, reading data, each round's training), so augmentation drawn from it
reproduces; privacy randomness never comes from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from torch.utils.data import TensorDataset

from confide.api import Place, SiteData, TaskKind
from confide.errors import DataError, TaskError
from confide.privacy.config import DpSgdSpec
from confide.privacy.spend import Spend
from confide.records import Arrays, Config, EvalRes, TrainRes
from confide.tasks.dp_sgd import DpSgd
from confide.tasks.local_rules import SiteMemory, norm_state_names
from confide.tasks.loop import Optimiser, sampling_rate, seed_of, train_locally
from confide.tasks.python_config import PythonTaskConfig
from confide.tasks.torch_io import load_arrays, module_arrays
from confide.tasks.torch_seed import GLOBAL_RNG
from confide.tasks.torch_seed import seeded as seeded_with
from confide.workloads.base import Progress, SiteSplit, Skipped
from confide.workloads.entry import load_task_kind


@contextmanager
def seeded(*parts: object) -> Iterator[None]:
    """Torch's global generator seeded from ``parts`` inside (no other thread drawing from it), restored after."""
    with seeded_with(seed_of(*parts)):
        yield


def pick_device(name: str, index: int = 0) -> torch.device:
    """The device a task's config asks for. ``auto`` is a CUDA device when there is one: with several, the
    ``index``-th site (in the order the simulator builds them) goes to device ``index`` modulo their number, so the
    sites of a simulation share the GPUs."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device(f"cuda:{index % max(torch.cuda.device_count(), 1)}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TaskError(f"task.device {name!r}: this machine has no CUDA device (use auto or cpu)")
    return torch.device(name)


def to_device(batch: Any, device: torch.device) -> Any:
    """Every tensor of ``batch`` (a tensor, or tuples, lists and dicts of them) on ``device``."""
    if device.type == "cpu":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple | list):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def cross_entropy(fields: BaseModel, model: Any, batch: Any) -> torch.Tensor:
    """The default loss: cross-entropy of ``model(x)`` against ``y`` for a batch ``(x, y)``."""
    if not (isinstance(batch, tuple | list) and len(batch) == 2):
        raise TaskError("the default loss takes batches (x, y); give the task a loss for other batches")
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


def make_fetch(data: Any, collate: Callable[[list[Any]], Any] | None) -> Callable[[torch.Tensor], Any]:
    """A batch of ``data`` from example indices: collated by the task's ``collate``, else a TensorDataset indexed
    directly and anything else through torch's default_collate."""
    if collate is None and isinstance(data, torch.utils.data.TensorDataset):
        tensors = data.tensors
        return lambda idx: tuple(t[idx] for t in tensors)
    join = collate or torch.utils.data.default_collate
    return lambda idx: None if idx.numel() == 0 else join([data[int(i)] for i in idx])


@dataclass(frozen=True)
class Autocast:
    """Mixed precision for training steps: the forward pass and loss under ``torch.autocast``; float16 scales the
    loss (a fresh scaler each round, as the optimiser is)."""

    device_type: str
    dtype: torch.dtype

    def scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device_type) if self.dtype == torch.float16 else None


def autocast_of(precision: str, device: torch.device, dp_sgd: bool, site: str) -> Autocast | None:
    """The mixed precision ``task.precision`` asks for on ``device`` (None: float32), or why it cannot run."""
    if precision == "float32":
        return None
    if precision not in ("bfloat16", "float16"):
        raise TaskError(f"task.precision {precision!r}: expected float32, bfloat16 or float16")
    if dp_sgd:
        raise TaskError(
            f"site {site}: task.precision {precision}: DP-SGD trains in float32 (each example's gradient is clipped "
            "and noised at full precision); use float32 with DP-SGD"
        )
    if precision == "float16" and device.type != "cuda":
        raise TaskError(
            f"site {site}: task.precision float16 needs a CUDA device (it trains with a loss scaler there), and this "
            f"site trains on {device}; use bfloat16 on a CPU"
        )
    return Autocast(device.type, torch.bfloat16 if precision == "bfloat16" else torch.float16)


@dataclass(frozen=True)
class Training:
    """Confide's own settings of a task written on the API: local training and where it runs."""

    label: str  # the task as the report and errors name it
    lr: float
    batch_size: int
    optimizer: Optimiser = "adam"
    device: str = "auto"
    precision: str = "float32"  # training steps: float32, bfloat16 or float16 (mixed precision; see autocast_of)
    # the batch generator's seed is seed_of(seed, site, round, *train_stream); the table task passes () because
    # its published figures (README: heart disease, privacy/utility, the audit) were measured with that stream
    train_stream: tuple[str, ...] = ("train",)
    # EvalRes.loss, where evaluate returns no "loss": the task's loss on the whole test split (a TensorDataset) in
    # one batch (the table task: a "loss" among evaluate's keys would join its metrics in the report)
    test_loss: bool = False


class TorchSiteTask:
    """One site's task for a :class:`TaskKind`: its network, its splits, what it keeps between rounds."""

    def __init__(
        self,
        workload: KindWorkload,
        train: Any,
        test: Any,
        *,
        site: str,
        seed: int,
        dp_sgd: DpSgdSpec | None,
    ) -> None:
        self.w, self.kind, self.fields = workload, workload.kind, workload.fields
        self.train_data, self.test_data = train, test
        self.site, self.seed = site, seed
        self.device = workload.place()
        self.autocast = autocast_of(workload.training.precision, self.device, dp_sgd is not None, site)
        self.model = workload.network().to(self.device)  # its weights come with every round's instruction
        self.dp = (
            None if dp_sgd is None else DpSgd(self.model, clip=dp_sgd.clip, noise_multiplier=dp_sgd.noise_multiplier)
        )
        self.memory = SiteMemory()
        self._loss = self.kind.loss or cross_entropy

    def personal(self, arrays: Arrays) -> Arrays:
        return self.memory.personal(arrays)

    def privacy_spend(self, config: Config) -> list[Spend]:
        if self.dp is None or self.train_data is None or len(self.train_data) == 0:
            return []
        rate = sampling_rate(config, n=len(self.train_data), batch_size=self.w.training.batch_size)
        return [self.dp.spend(rate, int(config.get("local_steps", 1)))]

    def train(self, arrays: Arrays, config: Config, round: int) -> TrainRes:
        data = self.train_data
        if data is None or len(data) == 0:
            raise TaskError(f"site {self.site} has no training examples")
        collate = self.kind.collate
        take = make_fetch(data, None if collate is None else lambda examples: collate(self.fields, examples))
        with seeded(self.seed, self.site, round, "augment"):
            return train_locally(
                self.model,
                arrays,
                config,
                self.memory,
                n=len(data),
                fetch=lambda idx, gen: to_device(self._augmented(take(idx), gen), self.device),
                loss=self._training_loss,
                generator=torch.Generator().manual_seed(
                    seed_of(self.seed, self.site, round, *self.w.training.train_stream)
                ),
                dp=self.dp,
                round=round,
                where=f"site {self.site}",
                lr=self.w.training.lr,
                batch_size=self.w.training.batch_size,
                optimiser=self.w.training.optimizer,
                scaler=self.autocast.scaler() if self.autocast is not None else None,
            )

    def _training_loss(self, module: torch.nn.Module, batch: Any) -> torch.Tensor:
        if self.autocast is None:
            return self._loss(self.fields, module, batch)
        with torch.autocast(self.autocast.device_type, dtype=self.autocast.dtype):
            value = self._loss(self.fields, module, batch)
        return value.float()

    def _augmented(self, batch: Any, generator: torch.Generator) -> Any:
        augment = self.kind.augment
        return batch if augment is None or batch is None else augment(self.fields, batch, generator)

    def score(self, arrays: Arrays, data: Any) -> dict[str, float]:
        if data is None or len(data) == 0:
            raise TaskError(f"site {self.site}: no examples to score")
        load_arrays(self.model, self.memory.personal(arrays))
        self.model.eval()
        with torch.no_grad():
            got = self.kind.evaluate(self.fields, self.model, data)
        out: dict[str, float] = {}
        for key in self.kind.metrics:
            if key not in got:
                raise TaskError(f"the task's evaluate returned no {key!r} (it returned {sorted(got)[:10]})")
            try:
                out[key] = float(got[key])
            except (TypeError, ValueError):
                raise TaskError(f"the task's evaluate returned {key!r} = {got[key]!r}, not a number") from None
        for key, value in got.items():
            if key not in out and isinstance(value, int | float | np.floating):
                out[key] = float(value)
        return out

    def evaluate(self, arrays: Arrays, config: Config, round: int) -> EvalRes:
        if self.test_data is None or len(self.test_data) == 0:
            raise TaskError(f"site {self.site} has no test examples")
        metrics = self.score(arrays, self.test_data)
        loss = metrics.get("loss", math.nan)
        if "loss" not in metrics and self.w.training.test_loss and isinstance(self.test_data, TensorDataset):
            with torch.no_grad():  # score left the model loaded and in eval mode
                batch = to_device(self.test_data.tensors, self.device)
                loss = float(self._loss(self.fields, self.model, batch))
        return EvalRes(round=round, num_examples=len(self.test_data), loss=loss, metrics=metrics)


class KindWorkload:
    """The workload of a task kind written on the API, with its validated fields and Confide's settings."""

    def __init__(self, kind: TaskKind[Any], fields: BaseModel, training: Training) -> None:
        self.kind, self.fields, self.training = kind, fields, training
        self._placed = 0  # site tasks built so far: under device auto, each goes to the next GPU
        self.metric = self.kind.metrics[0]
        self.metric_keys = tuple(self.kind.metrics)

    def place(self) -> torch.device:
        """The device of the next site task built."""
        device = pick_device(self.training.device, self._placed)
        self._placed += 1
        return device

    def network(self) -> torch.nn.Module:
        with GLOBAL_RNG:  # initialising draws from torch's generator: not while another thread's seeded block runs
            model = self.kind.build_model(self.fields)
        if not isinstance(model, torch.nn.Module):
            raise TaskError(f"task {self.training.label}: build_model returned a {type(model).__name__}, not a module")
        return model

    def _read(self, folder: Path, name: str, seed: int, data: Any, progress: Progress | None = None) -> SiteSplit:
        place = Place(
            Path(folder),
            name,
            seed,
            float(data.test_fraction),
            max_cases=data.max_cases_per_site,
            on_bad_case=str(data.on_bad_case),
            progress=progress or (lambda line: None),
        )
        with seeded(seed, name, "read"):
            got = self.kind.read_site(self.fields, place)
        if not isinstance(got, SiteData):
            raise DataError(f"site {name}: the task's read_site returned a {type(got).__name__}, not a SiteData")
        if len(got.train) == 0:
            raise DataError(f"site {name}: the task read no training examples from {folder}")
        skipped = tuple(Skipped(str(item), str(reason)) for item, reason in got.skipped)
        return SiteSplit(name, got.train, got.test, skipped, tuple(got.notes))

    def site_names(self, root: Path) -> list[str]:
        if self.kind.sites is not None:
            return [str(name) for name in self.kind.sites(self.fields, root)]
        if not root.exists():
            raise DataError(f"data.root {root} does not exist")
        if not root.is_dir():
            raise DataError(f"data.root {root} is not a folder of sites (one sub-folder per site)")
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def simulated_sites(self, data: Any, progress: Progress) -> list[str]:
        root = Path(data.root)
        if self.kind.prepare is not None:
            progress("preparing the data")
            self.fields = self.kind.prepare(self.fields, root)
        names = self.site_names(root)
        if data.sites:
            missing = sorted(set(data.sites) - set(names))
            if missing:
                raise DataError(f"data.sites names {missing}, which {root} does not hold (it holds {names})")
            names = [n for n in names if n in set(data.sites)]
        if not names:
            raise DataError(f"data.root {root} holds no sites")
        return names

    def load_sites(self, data: Any, seed: int, progress: Progress) -> list[SiteSplit]:
        root = Path(data.root)
        names = self.simulated_sites(data, progress)
        out = []
        for name in names:
            folder = root / name if (root / name).is_dir() else root  # a table's sites are rows of one file
            split = self._read(folder, name, seed, data, progress)
            if split.test is None or len(split.test) == 0:
                raise DataError(f"site {name}: a simulation scores every model on every site's test split; none read")
            out.append(split)
            progress(f"{name}: {len(split.train)} training and {len(split.test)} test examples")
        return out

    def load_site(self, data: Any, seed: int, root: Path, name: str) -> SiteSplit:
        return self._read(Path(root), name, seed, data)

    def pool(self, parts: Sequence[Any]) -> Any:
        if self.kind.pool is not None:
            return self.kind.pool(self.fields, parts)
        if all(isinstance(p, torch.utils.data.TensorDataset) for p in parts):
            width = len(parts[0].tensors)
            return torch.utils.data.TensorDataset(*(torch.cat([p.tensors[i] for p in parts]) for i in range(width)))
        return torch.utils.data.ConcatDataset(list(parts))

    def size(self, split: Any) -> int:
        return 0 if split is None else len(split)

    def task(self, train: Any, test: Any, *, site: str, seed: int, dp_sgd: DpSgdSpec | None) -> TorchSiteTask:
        refusal = self.kind.dp_sgd_refusal
        reason = None if dp_sgd is None or refusal is None else refusal(self.fields)
        if reason:
            raise TaskError(f"site {site}: DP-SGD cannot train task {self.training.label}: {reason}")
        return TorchSiteTask(self, train, test, site=site, seed=seed, dp_sgd=dp_sgd)

    def initial(self, seed: int) -> Arrays:
        """The untrained global model: torch seeded with the job's seed, so the same job starts alike anywhere."""
        with seeded_with(seed):
            return module_arrays(self.network())

    def norm_names(self) -> frozenset[str]:
        return norm_state_names(self.network())

    def batch_size(self) -> int:
        return self.training.batch_size

    def lr(self) -> float:
        return self.training.lr

    def describe(self) -> str:
        line = self.kind.describe(self.fields) if callable(self.kind.describe) else self.kind.describe
        return line or f"task {self.training.label} ({type(self.network()).__name__})"


def python_workload(config: PythonTaskConfig) -> KindWorkload:
    """The workload of a job whose task is named by entry point (``task.name: python``)."""
    kind, fields = load_task_kind(config)
    training = Training(
        config.entry, config.lr, config.batch_size, config.optimizer, config.device, precision=config.precision
    )
    return KindWorkload(kind, fields, training)
