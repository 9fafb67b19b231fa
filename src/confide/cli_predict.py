"""``confide predict`` and ``confide export``: use a final (or fine-tuned) model after the job.

``confide predict MODEL INPUT OUT [--job JOB]`` runs the model on new data of its task's kind (see the task's
``predict``: a BraTS case folder to a segmentation NIfTI, an image folder to a CSV of class probabilities, a table
to a CSV of predictions or risks). Without ``--job`` the task comes from the model file's own description. A table
model needs the statistics of the site that uses it: ``preprocessing.json`` beside the model (a deployed site's
run folder) is read by itself, or give one with ``--statistics``.

``confide export MODEL --onnx OUT`` writes the network as ONNX and checks onnxruntime's output against torch's on
a sample input.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from confide.cli_common import clean_errors as _clean_errors
from confide.cli_common import console

if TYPE_CHECKING:
    from confide.workloads.use import LoadedModel


ModelArg = Annotated[Path, typer.Argument(help="a model file Confide wrote (report models/, a site's run folder)")]
JobOpt = Annotated[
    Path | None, typer.Option("--job", help="the job file that trained it (default: the model file's own description)")
]
CodeOpt = Annotated[Path | None, typer.Option(help="the folder of a task named by entry point (task.name python)")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, auto (CUDA when present), cuda or cuda:N")]


def _load(model: Path, job: Path | None, code: Path | None, device: str) -> LoadedModel:
    from confide.config import load_job
    from confide.workloads.use import load_for_use

    loaded = load_for_use(model, job=load_job(job) if job is not None else None, code=code, device=device)
    card = loaded.card
    what = f"model {card.model} of job {card.job} (Confide {card.confide_version})" if card else "a model"
    console.print(f"{model}: {what}, task {loaded.job.task.name}", highlight=False)
    for note in loaded.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    return loaded


@_clean_errors
def predict(
    model: ModelArg,
    inputs: Annotated[Path, typer.Argument(metavar="INPUT", help="new data of the task's kind (file or folder)")],
    out: Annotated[Path, typer.Argument(help="where the predictions go (a file or a folder, by task)")],
    job: JobOpt = None,
    code: CodeOpt = None,
    statistics: Annotated[
        Path | None,
        typer.Option(
            help="the site's preprocessing.json (or a report's models/preprocessing/SITE.json); default: the one "
            "beside MODEL, when there is one"
        ),
    ] = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Run a final or fine-tuned model on new data of its task's kind and write its predictions."""
    from confide.workloads.use import run_prediction, site_statistics

    loaded = _load(model, job, code, device)
    kept, source = site_statistics(model, statistics)
    if source is not None:
        console.print(f"preprocessing statistics: {source}" + ("" if kept else " (none needed)"), highlight=False)
    done = run_prediction(loaded, inputs, out, kept)
    for note in done.notes:
        console.print(f"- {note}", highlight=False)
    for path in done.files:
        console.print(f"wrote {path}", highlight=False)
    console.print(f"predicted {done.count} input(s)")


@_clean_errors
def export(
    model: ModelArg,
    onnx: Annotated[Path, typer.Option("--onnx", help="the ONNX file to write")],
    job: JobOpt = None,
    code: CodeOpt = None,
    input_shape: Annotated[
        str | None,
        typer.Option(help="one input example's shape without the batch, e.g. 4,32,32,32 (default: the model's own)"),
    ] = None,
) -> None:
    """Export a model's network to ONNX, checked against torch's output on a sample input."""
    from confide.errors import ConfigError
    from confide.tasks.onnx_export import export_onnx
    from confide.workloads.use import example_input

    shape = None
    if input_shape is not None:
        try:
            shape = tuple(int(n) for n in input_shape.split(","))
        except ValueError:
            raise ConfigError(f"--input-shape {input_shape!r}: expected whole numbers separated by commas") from None
        if not shape or min(shape) < 1:
            raise ConfigError(f"--input-shape {input_shape!r}: every dimension must be at least 1")
    loaded = _load(model, job, code, "cpu")
    example = example_input(loaded, shape)
    check = export_onnx(loaded.network, example, onnx)
    console.print(
        f"wrote {check.path} (opset {check.opset}); onnxruntime matches torch on a sample input of shape "
        f"{tuple(example.shape)}: largest difference {check.max_abs_diff:.2g}",
        highlight=False,
    )
