"""The dashboard's token and address files: made once, private, kept across runs; read back with clear errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from confide.dashboard.files import TOKEN_FILE, ensure_token, read_place, read_token, url_for, write_place
from confide.errors import ConfideError


def test_a_token_is_made_once_private_and_kept_across_runs(tmp_path: Path) -> None:
    first = ensure_token(tmp_path / "kit")

    again = ensure_token(tmp_path / "kit")

    mode = stat.S_IMODE((tmp_path / "kit" / TOKEN_FILE).stat().st_mode)
    assert first == again and len(first) >= 32 and mode == 0o600


def test_two_folders_get_different_tokens(tmp_path: Path) -> None:
    assert ensure_token(tmp_path / "a") != ensure_token(tmp_path / "b")


def test_a_token_file_others_could_read_is_made_private(tmp_path: Path) -> None:
    token = ensure_token(tmp_path)
    os.chmod(tmp_path / TOKEN_FILE, 0o644)

    again = read_token(tmp_path)

    assert again == token and stat.S_IMODE((tmp_path / TOKEN_FILE).stat().st_mode) == 0o600


def test_a_short_or_unreadable_token_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / TOKEN_FILE).write_text("abc\n")

    with pytest.raises(ConfideError, match="at least 16 characters"):
        read_token(tmp_path)
    with pytest.raises(ConfideError, match="cannot be read"):
        read_token(tmp_path / "elsewhere")


def test_the_address_is_written_and_read_back(tmp_path: Path) -> None:
    written = write_place(tmp_path, "127.0.0.1", 8765)

    assert read_place(tmp_path) == written and written.url == "http://127.0.0.1:8765/"


def test_a_folder_without_a_dashboard_says_how_to_start_one(tmp_path: Path) -> None:
    with pytest.raises(ConfideError, match=r"no dashboard\.json.*--dashboard PORT"):
        read_place(tmp_path)
    (tmp_path / "dashboard.json").write_text("{not json")
    with pytest.raises(ConfideError, match="not a dashboard's address file"):
        read_place(tmp_path)


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:80/"),
        ("0.0.0.0", "http://127.0.0.1:80/"),
        ("::", "http://[::1]:80/"),
        ("::1", "http://[::1]:80/"),
        ("dash.example", "http://dash.example:80/"),
    ],
)
def test_the_url_reaches_a_wildcard_host_on_loopback(host: str, url: str) -> None:
    assert url_for(host, 80) == url
