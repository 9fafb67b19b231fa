"""A torch network exported to ONNX and checked: onnxruntime's output on a sample input against torch's.

:func:`export_onnx` exports with ``torch.onnx.export`` (the ``torch.export``-based exporter), runs the file with
onnxruntime on the CPU and compares its outputs with the network's on the same input; outputs that differ beyond
the tolerance are an error, and the file is not left behind. When the export fails, layers are exported alone on
the inputs they received in a forward pass, from the top down (the first failing child, then its first failing
child...), and the error names the smallest failing layer found (or says that every layer exports alone, and the
failure is in how the network's own forward combines them).

Needs the ``onnx`` extra (onnx, onnxscript, onnxruntime); an absent package is a clear error naming it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from confide.errors import ConfigError

ATOL = 1e-4
RTOL = 1e-3


@dataclass(frozen=True)
class ExportCheck:
    """An exported file and how closely onnxruntime's outputs matched torch's on the sample input."""

    path: Path
    max_abs_diff: float
    outputs: int
    opset: int | None


def _require() -> Any:
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"exporting to ONNX needs the onnx extra ({exc.name} is not installed): pip install 'confide[onnx]'"
        ) from None
    return onnxruntime


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's progress lines, warnings and graph dumps kept off the terminal."""
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in ("torch", "onnxscript", "onnx_ir")]
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export(module: torch.nn.Module, inputs: tuple[Any, ...], target: Path | None) -> None:
    """Export ``module`` to ``target`` (None: in memory only, to see whether it can be)."""
    with _quiet():
        torch.onnx.export(module, inputs, target, dynamo=True, verbose=False, external_data=False)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    marker = "Exception summary"
    if marker in text:
        text = text.split(marker, 1)[1].lstrip(" #")
    return text[:300] or type(exc).__name__


def failing_layer(model: torch.nn.Module, example: torch.Tensor) -> str | None:
    """The name and type of the smallest layer of ``model`` found that cannot be exported on its own, with the
    reason (None when none of its layers fails alone). Each layer is tried on the input it received in a forward
    pass of ``example``, from the top down: the children of the network, then the children of the first that
    fails, and so on, so a deep network costs a few exports per level."""
    seen: dict[str, tuple[Any, ...]] = {}
    hooks = []
    for name, module in model.named_modules():
        if not name:
            continue

        def keep(mod: torch.nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            if name not in seen:
                seen[name] = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)

        hooks.append(module.register_forward_pre_hook(keep))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    found: str | None = None
    current, prefix = model, ""
    while True:
        for child_name, child in current.named_children():
            name = f"{prefix}{child_name}"
            if name not in seen:  # not called in the forward pass
                continue
            try:
                _export(child, seen[name], None)
            except Exception as exc:  # the exporter raises many types; any of them means this layer fails alone
                found = f"layer {name!r} ({type(child).__name__}): {_first_line(exc)}"
                current, prefix = child, f"{name}."
                break
        else:
            return found


def _as_arrays(value: Any) -> list[np.ndarray]:
    if isinstance(value, torch.Tensor):
        return [value.detach().float().cpu().numpy()]
    if isinstance(value, tuple | list):
        return [a for v in value for a in _as_arrays(v)]
    if isinstance(value, dict):
        return [a for v in value.values() for a in _as_arrays(v)]
    raise ConfigError(f"the network returns a {type(value).__name__}; ONNX export compares tensors only")


def export_onnx(
    model: torch.nn.Module, example: torch.Tensor, out: Path, *, atol: float = ATOL, rtol: float = RTOL
) -> ExportCheck:
    """Export ``model`` (put in eval mode, on the CPU) to ``out`` and check it on ``example`` (a batch)."""
    runtime = _require()
    model = model.eval().cpu()
    example = example.cpu()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        _export(model, (example,), tmp)
    except Exception as exc:  # name the layer when one layer is the cause
        tmp.unlink(missing_ok=True)
        layer = failing_layer(model, example)
        where = layer or f"every layer exports alone; the network's own forward fails: {_first_line(exc)}"
        raise ConfigError(f"the network cannot be exported to ONNX: {where}") from None
    try:
        session = runtime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        got = session.run(None, {names[0]: example.numpy()})
        with torch.no_grad():
            expected = _as_arrays(model(example))
        if len(got) != len(expected):
            raise ConfigError(f"ONNX gives {len(got)} output(s), torch {len(expected)}")
        worst = 0.0
        for mine, theirs in zip(got, expected, strict=True):
            mine = np.asarray(mine, dtype=np.float64)
            if mine.shape != theirs.shape:
                raise ConfigError(f"ONNX gives an output of shape {mine.shape}, torch {theirs.shape}")
            diff = float(np.max(np.abs(mine - theirs), initial=0.0))
            if not np.allclose(mine, theirs, atol=atol, rtol=rtol):
                raise ConfigError(
                    f"onnxruntime's output differs from torch's on the sample input (largest difference {diff:.3g}, "
                    f"tolerance {atol:g} + {rtol:g} x |value|); the exported file was not kept"
                )
            worst = max(worst, diff)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return ExportCheck(path=out, max_abs_diff=worst, outputs=len(got), opset=_opset(out))


def _opset(path: Path) -> int | None:
    """The file's default-domain opset (for information; None when it cannot be read)."""
    import onnx

    try:
        imports = onnx.load(str(path), load_external_data=False).opset_import
    except Exception:
        return None
    return next((int(o.version) for o in imports if o.domain in ("", "ai.onnx")), None)
