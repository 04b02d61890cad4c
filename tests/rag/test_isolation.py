"""Tenant isolation and admin sharing, through every endpoint and both APIs."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from enclava.config import Settings
from tests.rag.conftest import INTERNAL, PUBLIC, RagApi

SECRET_TEXT = b"The Saffronwood merger closes on the fourth of May."


async def _alice_with_a_document(actors: Any, rag_api: Any) -> tuple[Any, dict, dict, dict]:
    alice_actor = await actors.user("alice@example.com")
    alice = rag_api(alice_actor)
    collection = await alice.create_collection("deals")
    document = await alice.ingest(collection["id"], "merger.txt", SECRET_TEXT)
    assert document["status"] == "processed"
    return alice, alice_actor, collection, document


def _every_request(collection_id: str, document_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("GET", f"/collections/{collection_id}", {}),
        ("DELETE", f"/collections/{collection_id}", {}),
        ("GET", f"/collections/{collection_id}/documents", {}),
        ("POST", f"/collections/{collection_id}/documents", {"files": {"file": ("x.txt", b"x")}}),
        ("POST", f"/collections/{collection_id}/search", {"json": {"query": "Saffronwood"}}),
        ("GET", f"/documents/{document_id}", {}),
        ("GET", f"/documents/{document_id}/events", {}),
        ("DELETE", f"/documents/{document_id}", {}),
    ]


@pytest.mark.parametrize("api", ["internal", "public"])
async def test_another_user_sees_nothing_of_alice_even_by_guessing_ids(
    actors: Any, rag_api: Any, client: Any, settings: Settings, api: str
) -> None:
    alice, _, collection, document = await _alice_with_a_document(actors, rag_api)
    bob_actor = await actors.user("bob@example.com")
    if api == "internal":
        base, headers = INTERNAL, bob_actor["headers"]
    else:
        key = await actors.api_key(bob_actor, scopes=["rag.read", "rag.write"])
        base, headers = PUBLIC, key["headers"]
    bob = RagApi(client, headers, base)
    own = await bob.create_collection("bobs")
    await bob.ingest(own["id"], "bob.txt", b"Bob writes about gardening and tomatoes.")

    listed = await client.get(f"{base}/collections", headers=headers)
    assert [c["id"] for c in listed.json()] == [own["id"]]

    stranger = str(uuid.uuid4())
    for method, path, kwargs in _every_request(collection["id"], document["id"]):
        response = await client.request(method, base + path, headers=headers, **kwargs)
        assert response.status_code == 404, (method, path, response.status_code)
        # A real id of someone else and a made-up id answer the same.
        guessed = path.replace(collection["id"], stranger).replace(document["id"], stranger)
        unknown = await client.request(method, base + guessed, headers=headers, **kwargs)
        assert unknown.status_code == 404
        if api == "public":
            assert response.json()["error"]["code"] == unknown.json()["error"]["code"]
        else:
            assert response.json()["code"] == unknown.json()["code"]

    # Bob's own searches never reach Alice's chunks, in any mode.
    for mode in ("hybrid", "dense", "sparse"):
        hits = await bob.search(own["id"], "Saffronwood merger May", mode=mode, top_k=10)
        assert all(hit["filename"] == "bob.txt" for hit in hits)

    # Nothing of Alice's changed.
    assert (await alice.wait(document["id"]))["status"] == "processed"
    assert await alice.search(collection["id"], "Saffronwood", mode="sparse")
    upload_dirs = [p.name for p in (settings.uploads_dir / "rag").iterdir()]
    assert sorted(upload_dirs) == sorted([collection["id"], own["id"]])
    alice_files = list((settings.uploads_dir / "rag" / collection["id"]).iterdir())
    assert [p.name for p in alice_files] == [document["id"]]


async def test_admin_sharing_grants_read_then_write_then_nothing(
    actors: Any, rag_api: Any, client: Any
) -> None:
    alice, _, collection, document = await _alice_with_a_document(actors, rag_api)
    admin_actor = await actors.user("admin@example.com", role="admin")
    admin = rag_api(admin_actor)
    bob_actor = await actors.user("bob@example.com")
    bob = rag_api(bob_actor)
    bob_key = await actors.api_key(bob_actor, scopes=["rag.read", "rag.write"])
    bob_public = RagApi(client, bob_key["headers"], PUBLIC)
    shares = f"{INTERNAL}/collections/{collection['id']}/shares"

    # Administrators manage access but do not read the data themselves.
    assert (
        await client.get(f"{INTERNAL}/collections/{collection['id']}", headers=admin.headers)
    ).status_code == 404
    everything = await client.get(f"{INTERNAL}/collections?all=true", headers=admin.headers)
    assert [(c["id"], c["access"]) for c in everything.json()] == [(collection["id"], "none")]
    refused = await client.get(f"{INTERNAL}/collections?all=true", headers=bob.headers)
    assert refused.status_code == 403

    # Only an administrator can share.
    by_owner = await client.post(shares, json={"email": "bob@example.com"}, headers=alice.headers)
    assert by_owner.status_code == 403 and by_owner.json()["code"] == "admin_required"

    granted = await client.post(
        shares, json={"email": "bob@example.com", "permission": "read"}, headers=admin.headers
    )
    assert granted.status_code == 201, granted.text
    assert granted.json() == {
        "user_id": str(bob_actor["id"]),
        "email": "bob@example.com",
        "permission": "read",
    }

    for reader in (bob, bob_public):
        listed = await client.get(f"{reader.base}/collections", headers=reader.headers)
        view = listed.json()[0]
        assert view["id"] == collection["id"]
        assert view["access"] == "read" and view["owner_email"] == "alice@example.com"
        hits = await reader.search(collection["id"], "Saffronwood merger")
        assert hits[0]["document_id"] == document["id"]
        assert (await reader.document(document["id"])).status_code == 200
        refused_upload = await reader.upload_raw(collection["id"], "b.txt", b"new text")
        assert refused_upload.status_code == 403
        refused_delete = await client.delete(
            f"{reader.base}/documents/{document['id']}", headers=reader.headers
        )
        assert refused_delete.status_code == 403

    # Write lets Bob add and remove documents, but the collection stays Alice's.
    upgraded = await client.post(
        shares, json={"user_id": str(bob_actor["id"]), "permission": "write"}, headers=admin.headers
    )
    assert upgraded.status_code == 201 and upgraded.json()["permission"] == "write"
    added = await bob.ingest(collection["id"], "from-bob.txt", b"Bob adds the Tamberlane appendix.")
    assert added["status"] == "processed"
    assert (await alice.search(collection["id"], "Tamberlane", mode="sparse"))[0][
        "filename"
    ] == "from-bob.txt"
    removed = await client.delete(f"{INTERNAL}/documents/{added['id']}", headers=bob.headers)
    assert removed.status_code == 204
    not_owner = await client.delete(
        f"{INTERNAL}/collections/{collection['id']}", headers=bob.headers
    )
    assert not_owner.status_code == 403
    not_owner_shares = await client.get(shares, headers=bob.headers)
    assert not_owner_shares.status_code == 403
    owner_view = await client.get(shares, headers=alice.headers)
    assert [s["email"] for s in owner_view.json()] == ["bob@example.com"]

    revoked = await client.delete(f"{shares}/{bob_actor['id']}", headers=admin.headers)
    assert revoked.status_code == 204
    for reader in (bob, bob_public):
        assert (await reader.search_raw(collection["id"], "Saffronwood")).status_code == 404
        assert (await reader.document(document["id"])).status_code == 404
    again = await client.delete(f"{shares}/{bob_actor['id']}", headers=admin.headers)
    assert again.status_code == 404


async def test_sharing_refuses_unknown_users_and_the_owner(
    actors: Any, rag_api: Any, client: Any
) -> None:
    _, alice_actor, collection, _ = await _alice_with_a_document(actors, rag_api)
    admin = await actors.user(role="admin")
    shares = f"{INTERNAL}/collections/{collection['id']}/shares"
    unknown = await client.post(
        shares, json={"email": "nobody@example.com"}, headers=admin["headers"]
    )
    assert unknown.status_code == 404
    owner = await client.post(
        shares, json={"user_id": str(alice_actor["id"])}, headers=admin["headers"]
    )
    assert owner.status_code == 400
    both = await client.post(
        shares,
        json={"email": "a@example.com", "user_id": str(uuid.uuid4())},
        headers=admin["headers"],
    )
    assert both.status_code == 422
    missing = await client.post(
        f"{INTERNAL}/collections/{uuid.uuid4()}/shares",
        json={"email": "a@example.com"},
        headers=admin["headers"],
    )
    assert missing.status_code == 404


async def test_api_keys_need_the_rag_scopes(actors: Any, client: Any) -> None:
    owner = await actors.user()
    no_rag = await actors.api_key(owner)  # default scopes: llm.* only
    read_only = await actors.api_key(owner, scopes=["rag.read"])
    writer = await actors.api_key(owner, scopes=["rag.write", "rag.read"])

    refused = await client.get(f"{PUBLIC}/collections", headers=no_rag["headers"])
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope"

    create = await client.post(
        f"{PUBLIC}/collections", json={"name": "c"}, headers=read_only["headers"]
    )
    assert create.status_code == 403
    created = await client.post(
        f"{PUBLIC}/collections", json={"name": "c"}, headers=writer["headers"]
    )
    assert created.status_code == 201
    collection_id = created.json()["id"]
    assert (
        await client.get(f"{PUBLIC}/collections/{collection_id}", headers=read_only["headers"])
    ).status_code == 200
    upload = await client.post(
        f"{PUBLIC}/collections/{collection_id}/documents",
        files={"file": ("a.txt", b"text")},
        headers=read_only["headers"],
    )
    assert upload.status_code == 403

    # Each API takes its own credential.
    jwt_on_public = await client.get(f"{PUBLIC}/collections", headers=owner["headers"])
    assert jwt_on_public.status_code == 401
    key_on_internal = await client.get(f"{INTERNAL}/collections", headers=writer["headers"])
    assert key_on_internal.status_code == 401
    anonymous = await client.get(f"{INTERNAL}/collections")
    assert anonymous.status_code == 401


async def test_malformed_ids_are_client_errors(actors: Any, client: Any) -> None:
    owner = await actors.user()
    key = await actors.api_key(owner, scopes=["rag.read"])
    internal = await client.get(f"{INTERNAL}/documents/not-a-uuid", headers=owner["headers"])
    assert internal.status_code == 422
    public = await client.get(f"{PUBLIC}/documents/not-a-uuid", headers=key["headers"])
    assert public.status_code == 400
    assert public.json()["error"]["type"] == "invalid_request_error"
