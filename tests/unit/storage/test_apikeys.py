"""API keys: only hashes are stored; a key works until revoked."""

from __future__ import annotations

from facegate.storage.apikeys import ApiKeyStore, hash_key
from facegate.storage.clients import aws_client


def test_create_check_revoke(aws):
    client = aws_client("dynamodb", aws)
    store = ApiKeyStore(client, aws.table)
    key = store.create("ops")
    assert key.startswith("fg_") and store.is_valid(key)
    assert not store.is_valid(key + "x") and not store.is_valid(None) and not store.is_valid("")
    items = client.scan(TableName=aws.table)["Items"]
    stored = [i for i in items if i["pk"]["S"].startswith("APIKEY#")]
    assert any(i["pk"]["S"] == f"APIKEY#{hash_key(key)}" for i in stored)
    assert key not in str(items)
    store.revoke(key)
    assert not store.is_valid(key)
