"""``/identify`` over enrolled subjects searches a warm function's cache of an eventually
consistent index (:mod:`facegate.storage.face_index`), so a subject deleted a moment ago may
still be in what it searches: it is confirmed with a consistent read before it is named, and
never named once gone. The deletions here bypass the store's counters, as the index's lag
would: nothing tells the cache."""

from __future__ import annotations

from service_fakes import ANN_1, ANN_PROBE, BOB, FakeProcessor

from facegate.service import FaceService
from facegate.storage.face_index import FaceIndex
from facegate.storage.photos import PhotoStore
from facegate.storage.subject_items import subject_pk
from facegate.storage.subjects import SubjectStore


def _service(fresh_aws, processor: FakeProcessor) -> FaceService:
    settings = fresh_aws.settings
    return FaceService(
        processor, SubjectStore.from_settings(settings), PhotoStore.from_settings(settings)
    )


def _delete_behind_the_counters(fresh_aws, subject_id: str) -> None:
    ddb, table = fresh_aws.dynamodb, fresh_aws.settings.table
    pages = ddb.get_paginator("query").paginate(
        TableName=table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": subject_pk(subject_id, "default")}},
    )
    for item in [i for page in pages for i in page["Items"]]:
        ddb.delete_item(TableName=table, Key={"pk": item["pk"], "sk": item["sk"]})


def test_a_subject_gone_from_the_table_is_not_named_from_a_stale_cache(fresh_aws, processor):
    service = _service(fresh_aws, processor)
    service.enrol("ann", [ANN_1])
    service.enrol("bob", [BOB])
    assert service.identify(ANN_PROBE)["best"]["subject_id"] == "ann"  # the cache is warm
    _delete_behind_the_counters(fresh_aws, "ann")
    answer = service.identify(ANN_PROBE)
    assert answer["match"] is False and answer["candidates"] == []
    # The cache was read again: ann's row is gone from it, not just filtered.
    ids, _ = service.subjects.all_embeddings(processor.model_id)
    assert ids == ["bob"]


def test_an_index_still_showing_a_deleted_subject_never_names_it(fresh_aws, processor, monkeypatch):
    service = _service(fresh_aws, processor)
    service.enrol("ann", [ANN_1])
    service.enrol("bob", [BOB])
    stale = service.subjects.faces.query(processor.model_id)
    _delete_behind_the_counters(fresh_aws, "ann")
    # The index lags: every query still returns ann's face.
    monkeypatch.setattr(FaceIndex, "query", lambda self, model_id, since=None: stale)
    answer = service.identify(ANN_PROBE)
    assert answer["match"] is False and answer["candidates"] == []
