"""``enclava rag ingest`` against a real server on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from enclava.app import create_app
from enclava.cli import app as cli
from enclava.config import Settings
from enclava.testing.server import serve_in_thread
from tests.conftest import PASSWORD, cli_env
from tests.rag import files

runner = CliRunner()


@pytest.fixture
def server(settings: Settings) -> Iterator[str]:
    with serve_in_thread(create_app(settings)) as url:
        yield url


def _create_user(settings: Settings, email: str) -> None:
    result = runner.invoke(
        cli, ["users", "create", "--email", email, "--password", PASSWORD], env=cli_env(settings)
    )
    assert result.exit_code == 0, result.output


def _tree(root: Path) -> Path:
    folder = root / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    (folder / "a.txt").write_text("The Kelvedon depot opens at seven.")
    (folder / "sub" / "b.md").write_text("# Notes\n\nThe Ashdown bridge is closed on Sundays.")
    (folder / "sub" / "c.pdf").write_bytes(files.pdf(["The Brancaster ferry runs hourly."]))
    (folder / "sub" / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (folder / "sub" / "ignored.bin").write_bytes(b"\x00\x01")
    (folder / ".hidden" / "secret.txt").write_text("never uploaded")
    return folder


def _search(server: str, headers: dict[str, str], collection_id: str, query: str) -> list[Any]:
    response = httpx.post(
        f"{server}/api-internal/v1/rag/collections/{collection_id}/search",
        json={"query": query, "mode": "sparse"},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    results: list[Any] = response.json()["results"]
    return results


def test_ingest_a_folder_with_a_password(server: str, settings: Settings, tmp_path: Path) -> None:
    _create_user(settings, "carol@example.com")
    folder = _tree(tmp_path)
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"faq": [{"q": "Where is Lymington?", "a": "On the coast."}]}))
    args = ["rag", "ingest", "--collection", "handbook", "--user", "carol@example.com"]
    args += ["--server", server, str(folder), str(extra)]

    result = runner.invoke(cli, args, env={"ENCLAVA_PASSWORD": PASSWORD, "COLUMNS": "200"})
    assert result.exit_code == 1, result.output  # broken.pdf failed
    out = result.output
    for label in ("docs/a.txt", "docs/sub/b.md", "docs/sub/c.pdf", "extra.json"):
        assert label in out
    assert "broken.pdf" in out and "failed" in out and "damaged" in out
    assert "ignored.bin" not in out and "secret.txt" not in out

    login = httpx.post(
        f"{server}/api-internal/v1/auth/login",
        json={"email": "carol@example.com", "password": PASSWORD},
    )
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    collections = httpx.get(f"{server}/api-internal/v1/rag/collections", headers=headers).json()
    assert [c["name"] for c in collections] == ["handbook"]
    assert collections[0]["document_count"] == 5
    hits = _search(server, headers, collections[0]["id"], "Brancaster ferry")
    assert hits[0]["filename"] == "c.pdf"

    # Running again reuses the collection and reports duplicates instead of re-embedding.
    again = runner.invoke(
        cli,
        [*args[:-2], "--server", server, str(folder / "a.txt")],
        env={"ENCLAVA_PASSWORD": PASSWORD, "COLUMNS": "200"},
    )
    assert again.exit_code == 0, again.output
    assert "duplicate" in again.output
    collections = httpx.get(f"{server}/api-internal/v1/rag/collections", headers=headers).json()
    assert len(collections) == 1 and collections[0]["document_count"] == 5


def test_ingest_with_an_api_key(server: str, settings: Settings, tmp_path: Path) -> None:
    from enclava.api_keys import service as keys
    from enclava.auth import repository
    from enclava.cli import run_with_session

    _create_user(settings, "dave@example.com")
    _create_user(settings, "erin@example.com")

    async def make_key(session: Any) -> str:
        user = await repository.get_user_by_email(session, "dave@example.com")
        assert user is not None
        _, plaintext = await keys.create_key(
            session, settings.secret_key_value, user, name="cli", scopes=["rag.read", "rag.write"]
        )
        return plaintext

    key = run_with_session(settings, make_key)
    document = tmp_path / "one.txt"
    document.write_text("The Ormesby mill grinds on Tuesdays.")
    base = ["rag", "ingest", "--collection", "keys", "--server", server, str(document)]

    ok = runner.invoke(
        cli, [*base, "--user", "dave@example.com"], env={"ENCLAVA_API_KEY": key, "COLUMNS": "200"}
    )
    assert ok.exit_code == 0, ok.output
    assert "processed" in ok.output

    wrong_user = runner.invoke(
        cli, [*base, "--user", "erin@example.com"], env={"ENCLAVA_API_KEY": key, "COLUMNS": "200"}
    )
    assert wrong_user.exit_code == 1
    assert "belong to dave@example.com" in wrong_user.output

    bad_key = runner.invoke(
        cli, [*base, "--user", "dave@example.com"], env={"ENCLAVA_API_KEY": "ek_not-a-real-key"}
    )
    assert bad_key.exit_code == 1
    assert "cannot list collections" in bad_key.output

    missing = runner.invoke(
        cli,
        [
            "rag",
            "ingest",
            "--collection",
            "keys",
            "--user",
            "dave@example.com",
            "--server",
            server,
            str(tmp_path / "nope"),
        ],
        env={"ENCLAVA_API_KEY": key, "COLUMNS": "200"},
    )
    assert missing.exit_code == 1
    assert "does not exist" in missing.output
