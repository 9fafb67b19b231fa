"""``confide features``: tile feature extraction for histopathology slides, offline (see :mod:`confide.features`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from confide.errors import ConfideError

features_app = typer.Typer(no_args_is_help=True, help="Tile features for histopathology slides (runs offline).")
console = Console()


@features_app.callback()
def _group() -> None:
    """Tile features for histopathology slides (runs offline)."""


@features_app.command()
def extract(
    tiles: Annotated[
        Path,
        typer.Argument(
            help="folder with one sub-folder of tile images per slide (<slide>/*.png|jpg), or one large image per "
            "slide (<slide>.png|jpg|tif, cut into a grid; background tiles dropped)"
        ),
    ],
    out: Annotated[Path, typer.Argument(help="where <slide>.safetensors go (a site's features/ folder)")],
    tile_size: Annotated[
        int, typer.Option(min=8, help="tile side in pixels (tiles of another size are resized)")
    ] = 224,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="ResNet-18/50 weights as a safetensors file in torchvision's names (pickled .pt/.pth files are "
            "refused). Without it: colour-texture statistics (40 per tile), deterministic and offline but much "
            "weaker than a pretrained network, for testing a pipeline"
        ),
    ] = None,
    arch: Annotated[
        str,
        typer.Option(
            help="auto (resnet18 or resnet50 from the weights, colour-texture without), resnet18, "
            "resnet50 or colour-texture"
        ),
    ] = "auto",
    batch: Annotated[int, typer.Option(min=1, help="tiles per forward pass")] = 64,
    min_tissue: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="large images: least share of tissue pixels a tile keeps")
    ] = 0.5,
) -> None:
    """Compute one feature vector per tile and write features/<slide>.safetensors (features, coords)."""
    from confide.features import extract_features, make_extractor, slide_sources

    try:
        extractor = make_extractor(weights, arch)  # a bad weights file fails before any slide is read
        slides = slide_sources(tiles)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            overall = progress.add_task("slides", total=len(slides))
            current = progress.add_task("tiles", total=0)

            started: list[str] = []

            def on_slide(slide: str, n: int) -> None:
                if started:  # the previous slide is done
                    progress.advance(overall, 1)
                started.append(slide)
                progress.reset(current, total=n, description=f"tiles of {slide}")

            report = extract_features(
                tiles,
                out,
                tile_size=tile_size,
                weights=weights,
                arch=arch,
                batch=batch,
                min_tissue=min_tissue,
                slides=slides,
                extractor=extractor,
                on_slide=on_slide,
                on_tiles=lambda n: progress.advance(current, n),
            )
            progress.update(overall, completed=len(slides))
    except ConfideError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(code=2) from None
    console.print(f"{len(report.written)} feature files ({report.extractor}, {report.dim} values per tile) in {out}")
    for item in report.skipped:
        console.print(f"[yellow]skipped[/] {item.item}: {item.reason}", highlight=False)
