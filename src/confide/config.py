"""The job file (YAML) as validated pydantic models.

A wrong field is a :class:`~confide.errors.ConfigError` whose message names the field, what was
given and what was expected. Relative paths in a job file are read relative to the directory the
command runs in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from confide.kinds.brain_tumor.config import BrainTumorTaskConfig
from confide.kinds.images.config import ImageTaskConfig
from confide.kinds.images.presets import MammoDensityPreset
from confide.kinds.mil.config import MilTaskConfig
from confide.kinds.tables.config import TableTaskConfig
from confide.privacy.config import PrivacyConfig
from confide.tasks.python_config import PythonTaskConfig
from confide.validation import read_yaml, validate_document


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    root: Path = Field(description="a folder holding one sub-folder of BraTS cases per site")
    sites: list[str] = Field(default_factory=list, description="site folders to use; empty: all of them")
    test_fraction: float = Field(default=0.25, gt=0, lt=1)
    max_cases_per_site: int | None = Field(default=None, ge=2)
    on_bad_case: Literal["skip", "stop"] = Field(
        default="skip", description="a case that cannot be read: skip it and list it in the report, or stop the job"
    )


class FederationConfig(_Strict):
    rounds: int = Field(default=10, ge=1, le=100_000)
    local_steps: int = Field(default=10, ge=1, le=1_000_000)
    min_sites: int = Field(default=1, ge=1, description="quorum: fewest accepted updates that close a round")
    round_deadline_s: float | None = Field(
        default=3600.0,
        gt=0,
        description="deployment: a site that has not answered by then is dropped from the round (null: no deadline)",
    )
    max_update_norm: float | Literal["auto", "off"] = Field(
        default="auto",
        description="an update whose L2 norm exceeds this is refused; auto: norm_multiple times the median norm of "
        "recent rounds' accepted updates (the first round calibrates on its first updates); off: no bound",
    )
    norm_multiple: float = Field(default=10.0, gt=1, le=1e6, description="auto norm bound: times the median norm")
    max_examples: int | None = Field(
        default=None, ge=1, description="the most examples one site's update may be weighed with, whatever it reports"
    )
    max_site_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="the largest share of a round's weight one site's update may get (1: no cap)",
    )
    evaluate_every: int = Field(
        default=0,
        ge=0,
        le=100_000,
        description="federated evaluation every N rounds: each site scores the global model on its own test split and "
        "the round records the scores (rounds.json); 0: never. A site under DP refuses it (its scores are not noised)",
    )
    send_final_model: bool = Field(
        default=True,
        description="deployment: send every site the final model when the job is done (each keeps it and fine-tunes "
        "it on its own patients); false: the sites leave without it (it stays in the server's report folder), which "
        "spares a large model's transfer to every site",
    )
    quorum_retries: int = Field(
        default=3, ge=0, le=1000, description="deployment: times a round that misses its quorum is tried again"
    )
    retry_wait_s: float = Field(default=30.0, ge=0, description="deployment: wait for sites before such a retry")
    start_sites: int | None = Field(
        default=None, ge=1, description="deployment: sites to wait for before round 1 (default: min_sites)"
    )
    site_timeout_s: float = Field(
        default=30.0, ge=1, description="deployment: a site silent this long (no heartbeat) is dropped from the round"
    )
    strategy: Literal[
        "fedavg", "median", "trimmed_mean", "fedadam", "fedyogi", "fedadagrad", "cyclic", "fedprox", "scaffold", "fedbn"
    ] = "fedavg"
    trim_fraction: float = Field(default=0.2, ge=0, lt=0.5, description="trimmed_mean: share cut at each end")
    server_lr: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="fedadam/fedyogi/fedadagrad: the server's learning rate (eta); default: the strategy's own "
        "(strategies/fedopt.py DEFAULT_SERVER_LR, listed in README's strategies section)",
    )
    beta1: float = Field(default=0.9, ge=0, lt=1, description="fedadam/fedyogi/fedadagrad: first-moment decay")
    beta2: float = Field(default=0.99, ge=0, lt=1, description="fedadam/fedyogi: second-moment decay")
    tau: float = Field(default=1e-3, gt=0, le=1, description="fedadam/fedyogi/fedadagrad: adaptivity (tau)")
    proximal_mu: float = Field(
        default=0.01, ge=0, allow_inf_nan=False, description="fedprox: strength of the sites' proximal term (mu)"
    )
    fraction: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="share of the connected sites that train each round (at least min_sites), drawn from the job's "
        "seed and the round; 1: every site. Under DP each sampled site's ledger records the rate and claims no "
        "amplification from it (the server picks and sees the sample)",
    )

    @model_validator(mode="after")
    def _norm_bound(self) -> FederationConfig:
        bound = self.max_update_norm
        if isinstance(bound, float) and not (0 < bound < float("inf")):
            raise ValueError(f"max_update_norm must be a positive finite number, 'auto' or 'off', got {bound}")
        return self

    @model_validator(mode="after")
    def _cyclic_quorum(self) -> FederationConfig:
        if self.strategy == "cyclic" and self.min_sites != 1:
            raise ValueError(f"strategy cyclic trains one site per round: min_sites must be 1, got {self.min_sites}")
        if self.strategy == "cyclic" and self.fraction < 1:
            raise ValueError(
                f"strategy cyclic already trains one site per round, in turn: fraction must be 1, got {self.fraction}"
            )
        return self


ENGINES = ("inprocess", "ray")


class SimulationConfig(_Strict):
    """How ``confide simulate`` runs the sites (a deployment ignores this section)."""

    engine: Literal["inprocess", "ray"] = Field(
        default="inprocess",
        description="inprocess: every site in this process, in turn (small jobs; baselines, fine-tuning and the "
        "cross-site matrix); ray: sites spread over a pool of Ray actors (many sites in bounded memory; the "
        "federated model only, scored at every site on its own test split). Needs the ray extra",
    )
    actors: int | None = Field(
        default=None, ge=1, le=4096, description="ray: the pool of actors (default: CPU cores, at most the sites)"
    )
    cpus_per_actor: float = Field(default=1.0, gt=0, le=1024, description="ray: CPU cores each actor reserves")
    gpus_per_actor: float = Field(default=0.0, ge=0, le=64, description="ray: GPUs each actor reserves (0: none)")
    object_store_mb: int = Field(
        default=256, ge=80, le=1_000_000, description="ray: memory of Ray's shared object store, in MB"
    )


class FinetuneConfig(_Strict):
    """After federation, each site adapts the federated model to its own training split."""

    steps: int | None = Field(
        default=None, ge=0, le=1_000_000, description="local steps at each site (default: local_steps; 0: off)"
    )
    lr: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="learning rate (default: a quarter of the task's, so that a few steps "
        "on one site's cases adapt the model without undoing what the federation learnt)",
    )

    @property
    def enabled(self) -> bool:
        return self.steps is None or self.steps > 0


_DATABASES = ("sqlite", "postgresql", "mysql", "mssql")  # mlflow's database stores (they need SQLAlchemy)


def tracking_uri_problem(value: str) -> str | None:
    """Why ``value`` is not an MLflow store Confide can use (a folder, ``file:``, a database URI, ``http(s):``),
    or ``None``."""
    text = value.strip()
    if not text or "\0" in text:
        return "expected a folder or a tracking URI, got an empty value"
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if not scheme:
        return None  # a folder: a local file store
    if scheme == "file":
        ok = bool(parts.path) and parts.netloc in ("", "localhost")
        return None if ok else "a file: URI names a local folder, as file:///absolute/folder"
    if scheme in ("http", "https"):
        return None if parts.hostname else f"an {scheme}: URI names a tracking server, as {scheme}://host:port"
    if scheme.split("+", 1)[0] in _DATABASES:
        if scheme.startswith("sqlite"):
            return None if parts.path.strip("/") else "a sqlite: URI names a database file, as sqlite:///mlflow.db"
        return None if parts.hostname else f"a {scheme}: URI names a database server"
    return (
        f"scheme {scheme!r} is not one Confide tracks to: use a folder, file:///..., sqlite:///..., "
        "postgresql://..., mysql://..., mssql://... or http(s)://..."
    )


class ReportConfig(_Strict):
    out: Path = Path("runs/job")
    plots: bool = True
    tensorboard: bool = Field(
        default=False, strict=True, description="write every round's metrics for TensorBoard under OUT/tensorboard"
    )
    mlflow: bool | str = Field(
        default=False,
        description="track the job in MLflow: true (a local store in OUT/mlruns), a folder, or a tracking URI "
        "(file:///..., sqlite:///..., http(s)://...); only an http(s) or database URI is reached over the network",
    )

    @field_validator("mlflow", mode="before")
    @classmethod
    def _strict_kind(cls, value: Any) -> Any:
        if not isinstance(value, bool | str):
            raise ValueError(f"expected true, false, a folder or a tracking URI, got {type(value).__name__}")
        return value

    @field_validator("mlflow", mode="after")
    @classmethod
    def _mlflow_target(cls, value: bool | str) -> bool | str:
        problem = None if isinstance(value, bool) else tracking_uri_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value.strip() if isinstance(value, str) else value


TaskConfig = Annotated[
    BrainTumorTaskConfig | MammoDensityPreset | TableTaskConfig | MilTaskConfig | PythonTaskConfig | ImageTaskConfig,
    Field(discriminator="name"),
]
TASK_NAMES = ("brain_tumor", "mammo_density", "table", "mil", "python", "image_classification")


class JobConfig(_Strict):
    name: str = Field(default="job", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    seed: int = Field(default=0, ge=0)
    task: TaskConfig = Field(
        default_factory=BrainTumorTaskConfig, description=f"what the sites learn; task.name is one of {TASK_NAMES}"
    )
    data: DataConfig
    federation: FederationConfig = FederationConfig()
    compare: list[Literal["local", "pooled"]] = Field(
        default_factory=list, description="baselines trained with the same budget of local steps"
    )
    privacy: PrivacyConfig = PrivacyConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    report: ReportConfig = ReportConfig()
    simulation: SimulationConfig = SimulationConfig()
    initial_model: Path | None = Field(
        default=None,
        description="the model to start from: a Confide safetensors file (a previous job's global.safetensors, or "
        "`confide init`'s), relative to the job file; every run of the job (federated and baselines) starts from it. "
        "Default: the task's untrained model for the job's seed. A server given one needs no torch to start",
    )

    @model_validator(mode="before")
    @classmethod
    def _task_name(cls, document: Any) -> Any:
        """A task without a name is the brain-tumour task (job files written before there were others); the
        phantoms of such jobs, under ``data.phantoms``, belong to the task (``task.phantoms``), generated with the
        job's seed."""
        if not isinstance(document, dict):
            return document
        task = document.get("task", {})
        if isinstance(task, dict) and "name" not in task:
            task = {**task, "name": "brain_tumor"}
            document = {**document, "task": task}
        data = document.get("data")
        if (
            isinstance(data, dict)
            and "phantoms" in data
            and isinstance(task, dict)
            and task.get("name") == "brain_tumor"
        ):
            phantoms = data["phantoms"]
            if isinstance(phantoms, dict) and "seed" not in phantoms:
                phantoms = {**phantoms, "seed": document.get("seed", 0)}
            rest = {k: v for k, v in data.items() if k != "phantoms"}
            document = {**document, "data": rest, "task": {**task, "phantoms": phantoms}}
        return document

    @field_validator("task", mode="after")
    @classmethod
    def _preset(cls, task: Any) -> Any:
        """A preset (task.name mammo_density) is read as the image_classification configuration it stands for."""
        return task.image_task() if isinstance(task, MammoDensityPreset) else task

    @model_validator(mode="after")
    def _secure_strategy(self) -> JobConfig:
        if self.privacy.secure_aggregation and self.federation.strategy != "fedavg":
            raise ValueError(
                f"secure aggregation gives the server only the sum of the updates; strategy "
                f"{self.federation.strategy!r} needs each update (use fedavg)"
            )
        if self.privacy.filters and self.federation.strategy == "scaffold":
            raise ValueError(
                "scaffold sends each site's control-variate change beside its update; the privacy filters do not "
                "cover it: use fedavg or fedprox with privacy filters"
            )
        if self.privacy.secure_aggregation and self.simulation.engine == "ray":
            raise ValueError(
                "simulation.engine ray does not run secure aggregation (the sites' keys and certificates from the "
                "simulator's in-memory CA are not made in the Ray actors): simulate it with engine inprocess"
            )
        if self.privacy.gaussian is not None and self.federation.strategy != "fedavg":
            raise ValueError(
                f"client-level DP averages with DP-FedAvg (equal weights, clipped updates); strategy "
                f"{self.federation.strategy!r} cannot carry it (use fedavg)"
            )
        return self

    def train_config(self, *, batch_size: int | None = None) -> dict[str, float | int]:
        """What every site is told to do in a round (the same in simulation and deployment)."""
        return {
            "local_steps": self.federation.local_steps,
            "lr": float(self.task.lr),
            "batch_size": batch_size or int(self.task.batch_size),
        }


def parse_job(document: Any, *, source: str = "job") -> JobConfig:
    """Validate a job given as a mapping (for example parsed YAML)."""
    return validate_document(document, JobConfig, source=source, what="job", tags={"task": TASK_NAMES})


def load_job(path: Path) -> JobConfig:
    """Read and validate a job file. A task named by entry point (``task.name: python``) is looked for beside the
    job file unless ``task.code`` says where (relative to the job file's folder)."""
    job = parse_job(read_yaml(path, "job"), source=f"job file {path}")
    if job.initial_model is not None and not job.initial_model.is_absolute():
        job = job.model_copy(update={"initial_model": (Path(path).resolve().parent / job.initial_model).resolve()})
    if isinstance(job.task, PythonTaskConfig):
        folder = Path(path).resolve().parent
        code = folder if job.task.code is None else folder / job.task.code
        job = with_code(job, code)
    return job


def with_code(job: JobConfig, code: Path) -> JobConfig:
    """The job with its entry-point task looked for in ``code`` (a deployed site's own copy of the task)."""
    if not isinstance(job.task, PythonTaskConfig):
        return job
    return job.model_copy(update={"task": job.task.model_copy(update={"code": Path(code).resolve()})})
