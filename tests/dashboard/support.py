"""What the dashboard's tests share: a tiny table job, plain HTTP on loopback (no proxy), a started dashboard."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from confide.config import JobConfig, parse_job

TOKEN = "test-token-0123456789abcdef"
HOSTILE = "<img src=x onerror=window.__pwned=1>"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def table_csv(path: Path, sites: tuple[str, ...] = ("north", "south", HOSTILE), rows: int = 40) -> Path:
    """A small binary table, one block of rows per site."""
    rng = np.random.default_rng(0)
    lines = ["site,x1,x2,label"]
    for k, site in enumerate(sites):
        for _ in range(rows):
            x1, x2 = rng.normal(size=2)
            lines.append(f"{site},{x1 + 0.5 * k:.4f},{x2:.4f},{int(x1 - 0.5 * x2 > 0)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def table_job(csv: Path, out: Path, **federation: Any) -> JobConfig:
    return parse_job(
        {
            "name": "dashboard-test",
            "seed": 0,
            "task": {"name": "table", "target": "label", "lr": 0.05},
            "data": {"root": str(csv), "test_fraction": 0.3},
            "federation": {"rounds": 3, "local_steps": 2, "min_sites": 2, **federation},
            "compare": [],
            "finetune": {"steps": 0},
            "report": {"out": str(out), "plots": False},
        }
    )


def request(
    url: str, *, token: str | None = TOKEN, method: str = "GET", headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one request; an HTTP error is an answer too."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, method=method, headers=sent)
    try:
        with _OPENER.open(req, timeout=30) as answer:
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def state(url: str, token: str = TOKEN) -> dict[str, Any]:
    status, _, body = request(url + "api/state", token=token)
    assert status == 200, body
    document: dict[str, Any] = json.loads(body)
    return document


def open_stream(url: str, token: str = TOKEN) -> Any:
    """The dashboard's event stream, opened (read it line by line)."""
    req = urllib.request.Request(url + "api/events", headers={"Authorization": f"Bearer {token}"})
    return _OPENER.open(req, timeout=30)
