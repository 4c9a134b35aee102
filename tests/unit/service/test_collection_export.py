"""A collection exported as a Parquet gallery (:class:`CollectionExporter`), galleries
attached to a collection (:meth:`CollectionStore.attach`), and identify in a collection
searching them. On moto (versioned S3, DynamoDB) with real enrolments made by
:class:`FaceService` and the fake processor: every vector, hence every match, is known."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from service_fakes import (
    ANN_1,
    ANN_2,
    ANN_PROBE,
    BOB,
    VECTORS,
    FakeProcessor,
    make_card,
    photo,
    unit,
)

from facegate.batch.erasure import Eraser, erase_enrolled
from facegate.errors import (
    CollectionDeletingError,
    GalleryExistsError,
    ModelMismatchError,
    NoEnrolledFacesError,
    UnknownCollectionError,
    UnknownGalleryError,
    ValidationError,
)
from facegate.gallery.format import GalleryMeta, build_gallery_table, read_gallery
from facegate.service import FaceService
from facegate.service.collection_export import CollectionExporter
from facegate.storage.collections import MAX_ATTACHED_GALLERIES, Collection, CollectionStore
from facegate.storage.galleries import GalleryStore
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import SubjectStore
from facegate.storage.tombstones import Tombstones

#: A face only the gallery ``visitors`` holds (zed); no enrolled subject is near it.
ZED = photo(60)
ZED_VECTOR = unit(0, 1, 0, 0)
GALLERY_PART = "galleries/{}/parts/export.parquet"


@dataclass
class World:
    fresh_aws: Any
    store: CollectionStore
    subjects: SubjectStore
    photos: PhotoStore
    tombstones: Tombstones
    eraser: Eraser
    galleries: GalleryStore
    exporter: CollectionExporter
    service: FaceService

    def enrol(self, collection: str, subject_id: str, photos: list[bytes]) -> None:
        self.service.in_collection(collection).enrol(subject_id, photos)

    def export(self, collection: str, gallery: str) -> dict[str, Any]:
        return self.exporter.export(self.store.get(collection), gallery, make_card())

    def versions(self, prefix: str) -> list[tuple[str, str]]:
        return self.eraser.objects.versions(prefix)

    def gallery(self, gallery: str, key: str | None = None) -> tuple[GalleryMeta, pa.Table]:
        """The gallery as served (or the table at ``key``), read back from the bucket."""
        body = self.eraser.objects.get(key or f"galleries/{gallery}/gallery.parquet").body
        return read_gallery(io.BytesIO(body), expected_model_id="fake")


@pytest.fixture
def world(fresh_aws) -> World:
    fresh_aws.s3.put_bucket_versioning(
        Bucket=fresh_aws.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    settings = fresh_aws.settings
    store = CollectionStore(fresh_aws.dynamodb, fresh_aws.table, default_model_id="fake")
    for name in ("lobby", "garage"):
        store.create(Collection(name, "fake"))
    tombstones = Tombstones.from_settings(settings)
    eraser = Eraser(fresh_aws.s3, fresh_aws.bucket, tombstones)
    subjects, photos = SubjectStore.from_settings(settings), PhotoStore.from_settings(settings)
    galleries = GalleryStore(fresh_aws.s3, fresh_aws.bucket)
    processor = FakeProcessor(VECTORS | {ZED: [ZED_VECTOR]})
    service = FaceService(processor, subjects, photos, tombstones, eraser=eraser)
    exporter = CollectionExporter(subjects, galleries, tombstones)
    return World(
        fresh_aws, store, subjects, photos, tombstones, eraser, galleries, exporter, service
    )


def _rows(table: pa.Table) -> list[tuple[str, str]]:
    return sorted(zip(table["subject_id"].to_pylist(), table["image_key"].to_pylist(), strict=True))


def _enrolled(world: World, collection: str) -> list[tuple[str, str]]:
    """``(subject_id, image_key)`` of every face enrolled in the collection, from its items."""
    return sorted((s, f.image_key) for s, f in world.subjects.in_collection(collection).all_faces())


def test_an_export_is_a_gallery_of_the_collection_s_enrolled_faces(world):
    world.enrol("lobby", "ann", [ANN_1, ANN_2])
    world.enrol("lobby", "bob", [BOB])
    world.enrol("default", "ann", [ANN_PROBE])  # another ann: not in the export
    answer = world.export("lobby", "lobby-g")

    assert (answer["collection"], answer["gallery"], answer["model_id"]) == (
        "lobby",
        "lobby-g",
        "fake",
    )
    assert (answer["rows"], answer["subjects"], answer["erased_dropped"]) == (3, 2, 0)
    meta, table = world.gallery("lobby-g")
    assert meta.subject_scope == "collection:lobby"
    assert (meta.model_id, meta.weights_sha256, meta.dim) == ("fake", "ab" * 32, 4)
    assert meta.row_count == table.num_rows == 3
    assert _rows(table) == _enrolled(world, "lobby")
    assert all(k.startswith(f"enrolments/lobby/{s}/") for s, k in _rows(table))
    by_key = dict(zip(table["image_key"].to_pylist(), table["embedding"].to_pylist(), strict=True))
    for subject_id, face in world.subjects.in_collection("lobby").all_faces():
        assert np.allclose(by_key[face.image_key], face.embedding, atol=1e-6), subject_id
    # Its one part carries the same rows, and the lineage names the collection.
    _, part = world.gallery("lobby-g", GALLERY_PART.format("lobby-g"))
    assert _rows(part) == _rows(table)
    assert world.exporter.exported_from("lobby-g") == "lobby"
    assert world.eraser.galleries_in_scope("collection:lobby") == ["lobby-g"]
    assert world.eraser.galleries_in_scope("collection:garage") == []


def test_erasing_a_subject_of_the_collection_rewrites_its_export(world):
    world.enrol("lobby", "ann", [ANN_1])
    world.enrol("lobby", "bob", [BOB])
    world.enrol("default", "bob", [BOB])
    world.export("lobby", "lobby-g")

    receipt = erase_enrolled(
        world.eraser,
        world.subjects.in_collection("lobby"),
        world.photos.in_collection("lobby"),
        "bob",
    )

    assert receipt.galleries == ["lobby-g"]
    assert receipt.totals()["gallery"]["rows_removed"] == 1
    assert receipt.totals()["gallery_part"]["rows_removed"] == 1
    for key, version in world.versions("galleries/lobby-g/"):  # no version holds bob
        if "/inbox/" in key:  # markers: random tokens (and a delete marker once merged)
            continue
        body = world.eraser.objects.get(key, version_id=version).body
        if key == "galleries/lobby-g/compaction.json":  # ETags and a generation id
            assert b"bob" not in body
            continue
        assert "bob" not in read_gallery(io.BytesIO(body))[1]["subject_id"].to_pylist(), key
    assert world.gallery("lobby-g")[1]["subject_id"].to_pylist() == ["ann"]
    # bob of default is someone else: erasing him leaves the lobby's export alone.
    world.service.delete_subject("bob")
    assert world.gallery("lobby-g")[1]["subject_id"].to_pylist() == ["ann"]


def test_a_person_erased_and_enrolled_again_within_one_second_is_exported(world):
    """The export drops faces older than their subject's tombstone: a face stamped to the
    second would read as older than an erasure earlier in that same second."""
    world.enrol("lobby", "ann", [ANN_1])
    time.sleep(1.05 - time.time() % 1)  # early in a second: both steps land within it
    world.service.in_collection("lobby").delete_subject("ann")
    world.enrol("lobby", "ann", [ANN_2])

    answer = world.export("lobby", "lobby-g")

    assert (answer["rows"], answer["erased_dropped"]) == (1, 0)
    assert _rows(world.gallery("lobby-g")[1]) == _enrolled(world, "lobby")


def test_a_re_export_holds_who_is_enrolled_now_in_a_single_version_of_its_part(world):
    world.enrol("lobby", "ann", [ANN_1])
    world.enrol("lobby", "bob", [BOB])
    world.export("lobby", "lobby-g")
    world.enrol("lobby", "cyd", [ANN_PROBE])
    world.service.in_collection("lobby").delete_subject("ann")

    answer = world.export("lobby", "lobby-g")

    assert answer["rows"] == 2
    assert _rows(world.gallery("lobby-g")[1]) == _enrolled(world, "lobby")
    assert [s for s, _ in _enrolled(world, "lobby")] == ["bob", "cyd"]
    part = GALLERY_PART.format("lobby-g")
    assert [k for k, _ in world.versions(part)] == [part]


def _write_gallery(world: World, gallery: str, subject: str, model_id: str = "fake") -> None:
    """A built gallery of uploads (not an export): one row, ``subject`` at :data:`ZED`."""
    meta = GalleryMeta(model_id=model_id, weights_sha256="ab" * 32, dim=4, threshold=0.4)
    table = build_gallery_table(
        subject_ids=[subject],
        image_keys=[f"uploads/{gallery}/{subject}/1.jpg"],
        face_indices=np.zeros(1, np.int32),
        bboxes=np.zeros((1, 4), np.float32),
        det_scores=np.ones(1, np.float32),
        embeddings=ZED_VECTOR.reshape(1, 4),
        meta=meta,
    )
    world.galleries.write_table(world.galleries.part_key(gallery, "p1"), table)
    world.galleries.compact(gallery)


def test_an_export_never_overwrites_a_gallery_it_did_not_write(world):
    world.enrol("lobby", "ann", [ANN_1])
    world.enrol("garage", "bob", [BOB])
    world.fresh_aws.s3.put_object(
        Bucket=world.fresh_aws.bucket, Key="uploads/staff/zed/1.jpg", Body=ZED
    )
    _write_gallery(world, "visitors", "zed")
    world.export("garage", "garage-g")
    before = {g: world.versions(f"galleries/{g}/") for g in ("staff", "visitors", "garage-g")}

    for gallery in ("staff", "visitors", "garage-g"):
        with pytest.raises(GalleryExistsError) as refused:
            world.export("lobby", gallery)
        assert refused.value.code == "gallery_exists"
    assert {g: world.versions(f"galleries/{g}/") for g in before} == before
    assert world.versions("exports/staff.json") == world.versions("exports/visitors.json") == []
    assert world.exporter.exported_from("garage-g") == "garage"
    assert world.gallery("garage-g")[1]["subject_id"].to_pylist() == ["bob"]


def test_an_empty_collection_or_another_model_is_no_export(world):
    with pytest.raises(NoEnrolledFacesError, match="'lobby' has no enrolled faces"):
        world.export("lobby", "lobby-g")
    # Nothing claims the name: neither a gallery nor the lineage written before the faces
    # were read (another collection may export under it).
    assert world.versions("galleries/lobby-g/") == world.versions("exports/lobby-g.json") == []
    assert world.exporter.exported_from("lobby-g") is None
    world.enrol("garage", "bob", [BOB])
    assert world.export("garage", "lobby-g")["rows"] == 1
    world.store.create(Collection("elsewhere", "other"))
    with pytest.raises(ModelMismatchError):
        world.export("elsewhere", "elsewhere-g")


def test_galleries_attach_and_detach_up_to_the_limit(world):
    assert world.store.get("lobby").galleries == ()
    assert world.store.attach("lobby", "g1").galleries == ("g1",)
    assert world.store.attach("lobby", "g1").galleries == ("g1",)  # again: no change
    assert world.store.attach("lobby", "g0").galleries == ("g0", "g1")
    assert world.store.get("lobby").galleries == ("g0", "g1")
    assert world.store.get("garage").galleries == ()
    assert world.store.detach("lobby", "g1").galleries == ("g0",)
    assert world.store.detach("lobby", "g1").galleries == ("g0",)  # not attached: no change
    assert world.store.detach("lobby", "g0").galleries == ()
    assert world.store.get("lobby").to_dict()["galleries"] == []

    names = [f"g{n}" for n in range(MAX_ATTACHED_GALLERIES)]
    for name in names:
        world.store.attach("garage", name)
    with pytest.raises(ValidationError, match=f"at most {MAX_ATTACHED_GALLERIES}"):
        world.store.attach("garage", "one-more")
    assert world.store.attach("garage", names[0]).galleries == tuple(sorted(names))
    assert world.store.get("garage").galleries == tuple(sorted(names))

    # default has no item until its first attachment, then one of the deployment's model.
    default = world.store.attach("default", "g1")
    assert (default.name, default.model_id, default.galleries) == ("default", "fake", ("g1",))
    assert world.store.get("default").galleries == ("g1",)
    with pytest.raises(UnknownCollectionError):
        world.store.attach("nowhere", "g1")
    assert [c.name for c in world.store.list(limit=100)[0]] == ["default", "garage", "lobby"]


def test_nothing_is_attached_to_or_detached_from_a_collection_being_deleted(world):
    world.store.attach("lobby", "g1")
    world.store.begin_deletion("lobby")
    with pytest.raises(CollectionDeletingError) as refused:
        world.store.attach("lobby", "g2")
    assert refused.value.code == "collection_deleting"
    with pytest.raises(CollectionDeletingError):
        world.store.detach("lobby", "g1")
    assert world.store.get("lobby").galleries == ("g1",)


def test_identify_in_a_collection_searches_its_attached_galleries_only(world):
    world.enrol("lobby", "ann", [ANN_1])
    _write_gallery(world, "visitors", "zed")
    _write_gallery(world, "staff", "zoe")  # built, but attached to nothing
    lobby = world.store.attach("lobby", "visitors")
    searching = world.service.in_collection("lobby", galleries=lobby.galleries)

    found = searching.identify(ZED)
    assert found["match"] is True and found["best"]["subject_id"] == "zed"
    assert [c["subject_id"] for c in found["candidates"]] == ["zed"]
    assert searching.identify(ZED, gallery="visitors")["best"]["subject_id"] == "zed"
    assert searching.identify(ANN_1)["best"]["subject_id"] == "ann"  # and its subjects
    assert searching.identify(ZED, subjects=False)["best"]["subject_id"] == "zed"
    with pytest.raises(UnknownGalleryError, match="not attached"):
        searching.identify(ZED, gallery="staff")
    # Without the attachment, zed is nobody in the lobby.
    assert world.service.in_collection("lobby").identify(ZED)["match"] is False


def test_a_collection_s_export_attached_to_another_finds_its_people(world):
    world.enrol("lobby", "ann", [ANN_1])
    world.export("lobby", "lobby-g")
    garage = world.store.attach("garage", "lobby-g")
    searching = world.service.in_collection("garage", galleries=garage.galleries)
    assert searching.identify(ANN_PROBE)["best"]["subject_id"] == "ann"
    assert world.service.in_collection("garage").identify(ANN_PROBE)["match"] is False
