"""``facegate keys create | list | revoke --id`` as an operator runs them, against moto.

The key is printed once, by ``create``; ``list`` shows id, name, scopes, created and
expires but never a key or its hash; ``revoke`` takes the public id, not the clear key.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from facegate.cli import main
from facegate.common import parse_instant
from facegate.errors import UnknownCollectionError
from facegate.storage.apikeys import ApiKeyStore, hash_key
from facegate.storage.clients import aws_client


@pytest.fixture
def store(aws) -> ApiKeyStore:
    keys = ApiKeyStore(aws_client("dynamodb", aws), aws.keys_table)
    for key in keys.all():  # the module's table: start each test from no keys
        keys.revoke(key.key_id)
    return keys


def create(capsys, *options: str) -> dict[str, str]:
    assert main(["keys", "create", *options]) == 0
    out, err = capsys.readouterr()
    assert "shown once" in err
    return dict(re.findall(r"^(\w+) +(.*)$", out, flags=re.M))


def test_create_prints_the_key_once_with_its_id_and_scopes(store, capsys):
    shown = create(capsys, "--name", "kiosk", "--scope", "verify", "--scope", "enrol")
    assert set(shown) == {"id", "name", "scopes", "collections", "created", "expires", "key"}
    assert shown["scopes"] == "verify,enrol" and shown["expires"] == "never"
    assert shown["collections"] == "*"  # unbound: every collection
    record = store.authorize(shown["key"], "enrol")
    assert (record.key_id, record.name) == (shown["id"], "kiosk")
    assert record.scopes == {"verify", "enrol"}


def test_expiry_by_duration_or_instant(store, capsys):
    before = datetime.now(UTC)
    shown = create(capsys, "--name", "temp", "--scope", "verify", "--expires-in", "30d")
    expires = parse_instant(shown["expires"], "expires")
    assert before + timedelta(days=30) - timedelta(seconds=1) <= expires
    assert expires <= datetime.now(UTC) + timedelta(days=30)
    assert store.lookup(shown["key"]).expires_at == expires
    fixed = create(
        capsys, "--name", "fixed", "--scope", "admin", "--expires-at", "2999-01-31T00:00:00Z"
    )
    assert fixed["expires"] == "2999-01-31T00:00:00Z"


def test_create_binds_a_key_to_collections(store, capsys):
    """``--collection`` repeated: the key's scopes apply in those collections only, and
    ``list`` shows them where an unbound key shows ``*``."""
    shown = create(
        capsys,
        *("--name", "kiosk-lobby", "--scope", "verify", "--scope", "enrol"),
        *("--collection", "lobby", "--collection", "default", "--collection", "lobby"),
    )
    assert shown["collections"] == "default,lobby"
    assert store.lookup(shown["key"]).collections == {"lobby", "default"}
    assert store.authorize(shown["key"], "verify", "lobby").key_id == shown["id"]
    with pytest.raises(UnknownCollectionError, match=r"^unknown collection 'office'$"):
        store.authorize(shown["key"], "verify", "office")
    create(capsys, "--name", "ops", "--scope", "admin")
    assert main(["keys", "list"]) == 0
    rows = {line.split()[1]: line.split()[3] for line in capsys.readouterr().out.splitlines()}
    assert rows == {"name": "collections", "kiosk-lobby": "default,lobby", "ops": "*"}
    assert main(["keys", "list", "--json"]) == 0
    listed = {k["name"]: k["collections"] for k in json.loads(capsys.readouterr().out)}
    assert listed == {"kiosk-lobby": ["default", "lobby"], "ops": None}


@pytest.mark.parametrize(
    "options,message",
    [
        (["--scope", "root"], "scopes must be one or more of verify, enrol, admin"),
        (["--scope", "verify", "--collection=-rf"], "collection must be 1-128 characters"),
        (["--scope", "verify", "--collection", "a/b"], "collection must be 1-128 characters"),
        (["--scope", "verify", "--expires-in", "soon"], "--expires-in is a count and a unit"),
        (["--scope", "verify", "--expires-in", "0d"], "--expires-in is a count and a unit"),
        (["--scope", "verify", "--expires-at", "2000-01-01T00:00:00Z"], "future time"),
        (["--scope", "verify", "--expires-at", "2999-01-01T00:00:00"], "time zone"),
    ],
)
def test_bad_options_exit_2_and_store_nothing(store, capsys, options, message):
    assert main(["keys", "create", "--name", "x", *options]) == 2
    assert message in capsys.readouterr().err
    assert store.all() == []


def test_a_scope_is_required(store, capsys):
    with pytest.raises(SystemExit) as done:
        main(["keys", "create", "--name", "x"])
    assert done.value.code == 2
    assert "--scope" in capsys.readouterr().err


def test_list_shows_every_key_but_never_a_key_or_its_hash(store, capsys):
    made = [
        create(capsys, "--name", "kiosk", "--scope", "verify"),
        create(capsys, "--name", "ops", "--scope", "admin", "--expires-in", "12h"),
    ]
    assert main(["keys", "list"]) == 0
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0].split() == ["id", "name", "scopes", "collections", "created", "expires"]
    # Oldest first; two keys made in the same second may come in either order.
    assert sorted(line.split()[:4] for line in lines[1:]) == sorted(
        [[made[0]["id"], "kiosk", "verify", "*"], [made[1]["id"], "ops", "admin", "*"]]
    )
    assert main(["keys", "list", "--json"]) == 0
    listed = {k["name"]: k for k in json.loads(capsys.readouterr().out)}
    assert set(listed) == {"kiosk", "ops"}
    assert listed["ops"]["expires_at"] == made[1]["expires"]
    assert listed["kiosk"]["expires_at"] is None
    assert listed["kiosk"]["collections"] is None
    for shown in made:
        for text in (table, json.dumps(listed)):
            assert shown["key"] not in text and hash_key(shown["key"]) not in text


def test_revoke_by_id(store, capsys):
    kept = create(capsys, "--name", "kept", "--scope", "verify")
    gone = create(capsys, "--name", "gone", "--scope", "verify")
    assert main(["keys", "revoke", "--id", gone["id"]]) == 0
    assert capsys.readouterr().out == f"revoked {gone['id']}\n"
    assert store.lookup(gone["key"]) is None and store.lookup(kept["key"]) is not None
    assert main(["keys", "revoke", "--id", gone["id"]]) == 2
    assert f"no API key with id '{gone['id']}'" in capsys.readouterr().err
