"""The dashboard's two files, in the server kit (a deployment) or the job's report folder (a simulation):

- ``dashboard.token``: the token (mode 0600), made once and kept across runs, so a bookmarked page still opens;
- ``dashboard.json``: where the dashboard listens (host, port, url), rewritten at every start.

``confide status`` reads both."""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from confide.errors import ConfideError

log = logging.getLogger(__name__)

TOKEN_FILE = "dashboard.token"
PLACE_FILE = "dashboard.json"
TOKEN_CHARS = 16


class Place(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str
    port: int
    url: str


def url_for(host: str, port: int) -> str:
    """The address to open: a wildcard host is reached on the loopback address, an IPv6 one in brackets."""
    shown = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def ensure_token(folder: Path) -> str:
    """The token in ``folder/dashboard.token``, made (random, mode 0600) when there is none."""
    path = folder / TOKEN_FILE
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_token(folder)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token


def read_token(folder: Path) -> str:
    path = folder / TOKEN_FILE
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfideError(f"the dashboard token {path} cannot be read: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        os.chmod(path, 0o600)
        log.warning("%s could be read by others: its mode is now 0600", path)
    if len(token) < TOKEN_CHARS or any(ch.isspace() for ch in token):
        raise ConfideError(
            f"the dashboard token {path} must be one word of at least {TOKEN_CHARS} characters: delete the file "
            "and a new one is made at the next start"
        )
    return token


def write_place(folder: Path, host: str, port: int) -> Place:
    place = Place(host=host, port=port, url=url_for(host, port))
    path = folder / PLACE_FILE
    tmp = path.with_name(f".{PLACE_FILE}.tmp")
    tmp.write_text(place.model_dump_json(indent=1) + "\n")
    os.replace(tmp, path)
    return place


def read_place(folder: Path) -> Place:
    path = folder / PLACE_FILE
    if not path.is_file():
        raise ConfideError(
            f"{folder} has no {PLACE_FILE}: no dashboard was started for it (start the server with --dashboard "
            "PORT, or a simulation with --dashboard PORT and give its report folder)"
        )
    try:
        return Place.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError) as exc:
        raise ConfideError(f"{path} is not a dashboard's address file: {exc}") from None
