"""Deleting a collection (:class:`CollectionDeleter`): every subject in it erased through the
erasure path, its exports destroyed, its dead letters purged, its item last; inline when
small, else message by message on the jobs queue. On moto (versioned S3, DynamoDB, SQS), with
real enrolments made by :class:`FaceService` and the fake processor of the service tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from service_fakes import ANN_1, ANN_2, ANN_PROBE, BOB, VECTORS, FakeProcessor, make_card
from tests_support import repo_root, run_first

from facegate.batch.collection_deletion import CollectionDeleter, CollectionDeletionRequest
from facegate.batch.erasure import Eraser
from facegate.errors import (
    CollectionBusyError,
    CollectionDeletingError,
    DefaultCollectionError,
    UnknownCollectionError,
)
from facegate.service import FaceService
from facegate.service.collection_export import CollectionExporter
from facegate.storage.clients import aws_client
from facegate.storage.collections import Collection, CollectionStore
from facegate.storage.galleries import GalleryStore
from facegate.storage.jobs import JobStore
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import SubjectStore
from facegate.storage.tombstones import Tombstones

LOBBY = ["ann", "bob", "cyd"]
EXPORT = "lobby-export"


@dataclass
class World:
    """One deployment's stores over moto: collections ``lobby`` and ``garage`` exist."""

    fresh_aws: Any
    sqs: Any
    jobs_queue: str
    dlq: str
    store: CollectionStore
    subjects: SubjectStore
    photos: PhotoStore
    tombstones: Tombstones
    eraser: Eraser
    service: FaceService
    jobs: JobStore

    def deleter(self, **limits: int) -> CollectionDeleter:
        return CollectionDeleter(
            self.store,
            self.subjects,
            self.photos,
            self.eraser,
            jobs=self.jobs,
            queue_url=self.jobs_queue,
            sqs=self.sqs,
            **limits,
        )

    def enrol(self, collection: str, subject_id: str, photos: list[bytes]) -> None:
        self.service.in_collection(collection).enrol(subject_id, photos)

    def export(self, collection: str, gallery: str) -> dict[str, Any]:
        exporter = CollectionExporter(
            self.subjects, GalleryStore(self.fresh_aws.s3, self.fresh_aws.bucket), self.tombstones
        )
        return exporter.export(self.store.get(collection), gallery, make_card())

    def versions(self, prefix: str) -> list[str]:
        """Every object version and delete marker under ``prefix``."""
        listed = self.fresh_aws.s3.list_object_versions(Bucket=self.fresh_aws.bucket, Prefix=prefix)
        return [v["Key"] for v in listed.get("Versions", []) + listed.get("DeleteMarkers", [])]

    def items(self, collection: str, subject_id: str) -> list[str]:
        """The sort keys of every item in the subject's partition."""
        answer = self.fresh_aws.dynamodb.query(
            TableName=self.fresh_aws.table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": f"SUBJECT#{collection}#{subject_id}"}},
            ConsistentRead=True,
        )
        return sorted(i["sk"]["S"] for i in answer["Items"])

    def bodies(self, url: str) -> list[str]:
        """Every message on the queue, taken off it, in the order received."""
        bodies: list[str] = []
        while got := self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
            for message in got:
                bodies.append(message["Body"])
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        return bodies


@pytest.fixture
def world(fresh_aws) -> World:
    fresh_aws.s3.put_bucket_versioning(
        Bucket=fresh_aws.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    settings = fresh_aws.settings
    sqs = aws_client("sqs", settings)
    jobs_queue = sqs.create_queue(QueueName="jobs")["QueueUrl"]
    dlq = sqs.create_queue(QueueName="ingest-dlq")["QueueUrl"]
    tombstones = Tombstones.from_settings(settings)
    eraser = Eraser(fresh_aws.s3, fresh_aws.bucket, tombstones, sqs=sqs, dead_letter_queues=[dlq])
    store = CollectionStore(fresh_aws.dynamodb, fresh_aws.table, default_model_id="fake")
    for name in ("lobby", "garage"):
        store.create(Collection(name, "fake"))
    subjects, photos = SubjectStore.from_settings(settings), PhotoStore.from_settings(settings)
    service = FaceService(FakeProcessor(VECTORS), subjects, photos, tombstones, eraser=eraser)
    jobs = JobStore(fresh_aws.dynamodb, fresh_aws.table)
    return World(
        fresh_aws, sqs, jobs_queue, dlq, store, subjects, photos, tombstones, eraser, service, jobs
    )


def _enrol_lobby(world: World) -> None:
    """ann (two photos), bob and cyd in lobby."""
    world.enrol("lobby", "ann", [ANN_1, ANN_2])
    world.enrol("lobby", "bob", [BOB])
    world.enrol("lobby", "cyd", [ANN_PROBE])


def _upload_notification(key: str) -> str:
    """An S3 notification of ``key``, as a dead-letter queue keeps it."""
    sample = json.loads((repo_root() / "events/embed/photo-upload.json").read_text())
    doc = json.loads(sample["Records"][0]["body"])
    doc["Records"][0]["s3"]["object"]["key"] = key
    return json.dumps(doc)


def _assert_lobby_gone(world: World) -> None:
    assert world.versions("enrolments/lobby/") == []
    for subject_id in LOBBY:
        assert world.items("lobby", subject_id) == []
    assert world.subjects.in_collection("lobby").subject_ids() == []
    with pytest.raises(UnknownCollectionError):
        world.store.get("lobby")
    erased = world.tombstones.in_scope("collection:lobby", LOBBY)
    assert sorted(erased) == LOBBY


def test_an_inline_deletion_erases_every_subject_export_and_dead_letter(world):
    _enrol_lobby(world)
    world.enrol("garage", "ann", [ANN_1])  # another ann, in another collection
    world.enrol("default", "ann", [ANN_1])  # and another
    world.export("lobby", EXPORT)
    gallery_versions = world.versions(f"galleries/{EXPORT}/")
    assert len(gallery_versions) >= 2  # the part and gallery.parquet
    # An enrolment killed between its photo and its record: a photo that no item names.
    world.fresh_aws.s3.put_object(
        Bucket=world.fresh_aws.bucket, Key="enrolments/lobby/ghost/f.png", Body=ANN_1
    )
    doomed = [_upload_notification(f"enrolments/lobby/{s}/f.png") for s in ("ann", "bob")]
    kept = [_upload_notification(f"enrolments/{c}/ann/f.png") for c in ("default", "garage")]
    for body in doomed + kept:
        world.sqs.send_message(QueueUrl=world.dlq, MessageBody=body)
    purges: list[set[str]] = []
    real_purge = world.eraser.purge_dead_letters

    def counted(subject_ids: Any, galleries: Any, collection: Any) -> Any:
        purges.append(set(subject_ids))
        return real_purge(subject_ids, galleries, collection)

    world.eraser.purge_dead_letters = counted  # type: ignore[method-assign]

    done, receipt = world.deleter().delete("lobby")

    assert done is True
    assert (receipt["collection"], receipt["deleted"], receipt["subjects_erased"]) == (
        "lobby",
        True,
        3,
    )
    assert receipt["galleries_destroyed"] == [EXPORT]
    assert [r["subject_id"] for r in receipt["receipts"]] == LOBBY
    assert {r["scope"] for r in receipt["receipts"]} == {"collection:lobby"}
    ann = receipt["receipts"][0]["totals"]
    assert ann["enrolment_photos"]["versions_deleted"] == 2
    assert ann["subject_items"]["rows_removed"] == 3  # META and two faces
    totals = receipt["totals"]
    # Three subjects' folders, then the ghost's photo swept with the collection's prefix.
    assert totals["enrolment_photos"] == {"objects": 4, "versions_deleted": 5, "rows_removed": 5}
    assert totals["subject_items"] == {"objects": 3, "versions_deleted": 0, "rows_removed": 7}
    assert totals["gallery"]["versions_deleted"] == len(gallery_versions)
    assert totals["dead_letters"]["rows_removed"] == 2
    assert {r["kind"] for r in receipt["remaining"]} == {"tombstone", "point_in_time_recovery"}

    _assert_lobby_gone(world)
    assert world.versions(f"galleries/{EXPORT}/") == []
    assert world.versions(f"exports/{EXPORT}.json") == []
    # The dead-letter queue was read once for all of them; the others' letters stay.
    assert purges == [set(LOBBY)]
    assert sorted(world.bodies(world.dlq)) == sorted(kept)
    # The other anns are someone else: untouched, and never tombstoned.
    for collection in ("garage", "default"):
        assert len(world.versions(f"enrolments/{collection}/ann/")) == 1
        assert world.items(collection, "ann") != []
        assert world.service.in_collection(collection).describe_subject("ann")["face_count"] == 1
    assert world.tombstones.in_scope("api", ["ann"]) == {}
    assert world.tombstones.in_scope("collection:garage", ["ann"]) == {}
    assert world.store.get("garage").deleting is None

    with pytest.raises(UnknownCollectionError):
        world.deleter().delete("lobby")


def test_a_destroyed_export_is_detached_from_every_collection_it_was_attached_to(world):
    _enrol_lobby(world)
    world.export("lobby", EXPORT)
    for name in ("garage", "default", "lobby"):
        world.store.attach(name, EXPORT)
    world.store.attach("garage", "other-gallery")

    done, _ = world.deleter().delete("lobby")

    assert done is True
    assert world.store.get("garage").galleries == ("other-gallery",)
    assert world.store.get("default").galleries == ()
    # A gallery of that name made later is not attached anywhere by a leftover name.
    assert [c.galleries for c in world.store.list()[0]] == [(), ("other-gallery",)]


def test_default_is_never_deleted(world):
    world.enrol("default", "ann", [ANN_1])
    with pytest.raises(DefaultCollectionError):
        world.deleter().delete("default")
    assert len(world.versions("enrolments/default/ann/")) == 1
    assert world.tombstones.in_scope("api", ["ann"]) == {}


def test_a_large_collection_is_deleted_by_the_jobs_workers_one_message_at_a_time(world):
    _enrol_lobby(world)
    world.export("lobby", EXPORT)
    deleter = world.deleter(inline_max=1, batch=1)

    done, state = deleter.delete("lobby")

    assert done is False
    assert state["status"] == "queued" and state["subjects"] == 3
    assert (state["scope"], state["collection"]) == ("collection:lobby", "lobby")
    status_key = f"erasures/{state['erasure_id']}.json"
    assert _state(world, status_key) == state
    # Marked before anything was erased: nothing more is enrolled into it meanwhile.
    assert world.store.get("lobby").deleting is not None
    with pytest.raises(CollectionDeletingError):
        world.enrol("lobby", "dan", [BOB])
    assert sorted(world.subjects.in_collection("lobby").subject_ids()) == LOBBY

    handled: list[CollectionDeletionRequest] = []
    while bodies := world.bodies(world.jobs_queue):
        for body in bodies:
            request = CollectionDeletionRequest.from_message(body)
            left = len(world.subjects.in_collection("lobby").subject_ids())
            deleter.run(request)
            handled.append(request)
            if request.step == 0:
                # The first message delivered again: already handled, changes nothing.
                after = _state(world, status_key)
                assert after["subjects_erased"] == 1 and after["subjects_left"] == 2
                deleter.run(request)
                assert _state(world, status_key) == after
                assert len(world.subjects.in_collection("lobby").subject_ids()) == left - 1

    assert [r.step for r in handled] == [0, 1, 2]
    assert {(r.deletion_id, r.collection) for r in handled} == {(state["erasure_id"], "lobby")}
    finished = _state(world, status_key)
    assert finished["status"] == "done" and finished["collection"] == "lobby"
    receipt = finished["receipt"]
    assert receipt["subjects_erased"] == 3 and receipt["receipts"] == []
    assert receipt["totals"]["subject_items"] == {
        "objects": 3,
        "versions_deleted": 0,
        "rows_removed": 7,
    }
    assert receipt["totals"]["enrolment_photos"]["versions_deleted"] == 4
    _assert_lobby_gone(world)
    assert world.versions(f"galleries/{EXPORT}/") == []
    assert world.versions(f"exports/{EXPORT}.json") == []

    for old in handled:  # every message delivered again after the end
        deleter.run(old)
    assert _state(world, status_key) == finished
    assert world.bodies(world.jobs_queue) == []


@pytest.mark.parametrize("limits", [{}, {"inline_max": 1, "batch": 1}], ids=["inline", "job"])
def test_every_subject_is_erased_from_the_jobs_that_verified_against_the_export(world, limits):
    """The export is destroyed by the first step; the jobs run on it still hold rows of the
    collection's people, and each subject's erasure must reach them, whichever step erases
    the subject (and the receipt names the export either way)."""
    _enrol_lobby(world)
    world.export("lobby", EXPORT)
    rows = "".join(f"{s}.jpg,{EXPORT},verify,{s}\n" for s in LOBBY)
    world.fresh_aws.s3.put_object(
        Bucket=world.fresh_aws.bucket,
        Key="jobs/j1/manifest.csv",
        Body=("probe,gallery,mode,claimed_subject\n" + rows).encode(),
    )
    deleter = world.deleter(**limits)
    done, receipt = deleter.delete("lobby")
    while bodies := world.bodies(world.jobs_queue):
        for body in bodies:
            deleter.run(CollectionDeletionRequest.from_message(body))
    if not done:
        receipt = _state(world, f"erasures/{receipt['erasure_id']}.json")["receipt"]
    _assert_lobby_gone(world)
    # No row left: the manifest is destroyed with every version.
    left = world.versions("jobs/j1/")
    assert left == [], [_body(world, key) for key in left]
    assert receipt["totals"]["job_manifest"]["rows_removed"] == 3
    assert receipt["galleries_destroyed"] == [EXPORT]


def _body(world: World, key: str) -> bytes:
    body: bytes = world.fresh_aws.s3.get_object(Bucket=world.fresh_aws.bucket, Key=key)[
        "Body"
    ].read()
    return body


def _state(world: World, key: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_body(world, key))
    return doc


def test_a_collection_whose_export_a_job_verifies_against_is_refused_until_it_ends(world):
    _enrol_lobby(world)
    world.export("lobby", EXPORT)
    exported = world.versions(f"galleries/{EXPORT}/")
    world.jobs.create("job-elsewhere", 1, 1, 0, galleries=["staff"])
    world.jobs.create("job-1", 2, 1, 0, galleries=[EXPORT, "staff"])

    with pytest.raises(CollectionBusyError, match="1 verification jobs") as refused:
        world.deleter().delete("lobby")

    assert refused.value.code == "collection_busy"
    # Nothing was touched: not marked, every subject and the export as they were.
    assert world.store.get("lobby").deleting is None
    assert sorted(world.subjects.in_collection("lobby").subject_ids()) == LOBBY
    assert world.versions(f"galleries/{EXPORT}/") == exported
    assert world.tombstones.in_scope("collection:lobby", LOBBY) == {}
    world.enrol("lobby", "dan", [BOB])  # enrolments go on

    world.jobs.fail("job-1", "stopped by its owner")
    done, receipt = world.deleter().delete("lobby")
    assert done is True and receipt["subjects_erased"] == 4
    _assert_lobby_gone(world)


def test_an_enrolment_into_a_collection_being_deleted_is_refused_and_stores_nothing(world):
    world.store.begin_deletion("lobby")
    with pytest.raises(CollectionDeletingError, match="lobby") as refused:
        world.enrol("lobby", "dan", [BOB, ANN_1])
    assert refused.value.code == "collection_deleting"
    assert world.versions("enrolments/lobby/") == []
    assert world.items("lobby", "dan") == []


def test_a_deletion_begun_between_the_photos_and_the_commit_cancels_the_enrolment(world):
    """Fence read and photos stored, then the collection is marked, then the commit: the
    guard cancels it and the enrolment erases its photos."""
    world.enrol("lobby", "ann", [ANN_1])
    enrolling = world.service.in_collection("lobby")
    run_first(enrolling.subjects, "write_faces", lambda: world.store.begin_deletion("lobby"))
    with pytest.raises(CollectionDeletingError):
        enrolling.enrol("dan", [BOB, ANN_2])
    assert world.versions("enrolments/lobby/dan/") == []
    assert world.items("lobby", "dan") == []
    assert world.subjects.in_collection("lobby").subject_ids() == ["ann"]
    done, receipt = world.deleter().delete("lobby")  # a deletion already marked goes on
    assert done is True and [r["subject_id"] for r in receipt["receipts"]] == ["ann"]
    assert world.versions("enrolments/lobby/") == []


def test_a_whole_deletion_during_an_enrolment_leaves_nothing_of_either(world):
    """The deletion runs whole after the enrolment's first photo: it lists the subjects
    enrolled before, erases them and the collection; the enrolment's commit finds no
    collection and erases its photos, so nothing is left under the collection."""
    _enrol_lobby(world)
    receipts: list[dict[str, Any]] = []
    enrolling = world.service.in_collection("lobby")
    run_first(
        enrolling.photos,
        "put",
        lambda: receipts.append(world.deleter().delete("lobby")[1]),
        after=1,
    )
    with pytest.raises(UnknownCollectionError):
        enrolling.enrol("dan", [BOB, ANN_2])
    assert [r["subject_id"] for r in receipts[0]["receipts"]] == LOBBY
    assert world.items("lobby", "dan") == []
    _assert_lobby_gone(world)
