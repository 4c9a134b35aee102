"""A collection exported as a Parquet gallery, so that batch jobs verify against API-enrolled
people. Torch-free: the embeddings are the stored ones, nothing is embedded again.

The export is an ordinary gallery (``galleries/<g>/``) built the ordinary way: one part,
``parts/export.parquet``, the enrolled faces as rows (their enrolment photos as
``image_key``, their enrolment time as ``source_at``), then compaction into
``gallery.parquet``. Its rows' ``subject_scope`` is the collection's (``collection:<c>``, or
``api`` for ``default``), so the people in it stay the collection's people:

- erasing a subject of the collection rewrites the export without them
  (:meth:`~facegate.batch.erasure.Eraser.galleries_in_scope` finds it through its lineage,
  ``exports/<g>.json``), and a verification job against it drops rows of a person erased
  since (:mod:`facegate.batch.results_guard` reads the scope from the footer);
- deleting the collection destroys the export (:mod:`facegate.service.collection_deletion`).

Why it holds against an erasure running alongside: the lineage is written before any face is
read, and the compaction, after the part is written, drops every row of a subject erased in
the scope after their face was enrolled. An erasure whose listing of galleries came after the
lineage rewrites the gallery itself; one whose listing came before recorded its tombstone
before that, so the compaction drops the person.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from facegate.common import utc_now, validate_id
from facegate.errors import (
    GalleryExistsError,
    ModelMismatchError,
    NoEnrolledFacesError,
    ValidationError,
)
from facegate.gallery.format import GalleryMeta, build_gallery_table
from facegate.models.card import ModelCard
from facegate.storage import keys as layout
from facegate.storage.collections import Collection
from facegate.storage.galleries import GalleryStore
from facegate.storage.objects import ObjectStore
from facegate.storage.subjects import SubjectStore
from facegate.storage.tombstones import ErasureLookup, collection_scope

#: The export's one part: a re-export replaces it.
EXPORT_PART = "export"


class CollectionExporter:
    """Writes collections' exports into the bucket of ``galleries``."""

    def __init__(
        self, subjects: SubjectStore, galleries: GalleryStore, erasures: ErasureLookup | None
    ) -> None:
        self.subjects = subjects
        self.galleries = galleries
        self.objects: ObjectStore = galleries.objects
        self.erasures = erasures

    def exported_from(self, gallery: str) -> str | None:
        """The collection ``gallery`` was exported from (None: not an export)."""
        try:
            doc = self.objects.get_json(layout.export_lineage_key(gallery), "a lineage")
        except ValidationError:
            return None
        collection = doc.get("collection") if isinstance(doc, dict) else None
        return collection if isinstance(collection, str) else None

    def export(self, collection: Collection, gallery: str, card: ModelCard) -> dict[str, Any]:
        """Export ``collection`` (embedded with ``card``'s model) as ``gallery``.

        :class:`GalleryExistsError` when ``gallery`` holds anything that is not an export of
        this collection (a gallery of uploads must never be overwritten);
        :class:`NoEnrolledFacesError` when the collection has no face (a gallery of no row is
        no gallery). Exporting again replaces the export: people erased since are gone from
        it, people enrolled since are in it.
        """
        validate_id(gallery, "gallery")
        if card.model_id != collection.model_id:
            raise ModelMismatchError(
                f"collection {collection.name!r} is of model {collection.model_id!r}, "
                f"not {card.model_id!r}"
            )
        again = self._check_free(collection.name, gallery)
        started = utc_now()
        # The lineage first: an erasure while the faces are read finds the export to fix.
        self._put_lineage(gallery, {"collection": collection.name, "started_at": started})
        faces = self.subjects.in_collection(collection.name).all_faces()
        faces = [(s, f) for s, f in faces if f.model_id == collection.model_id]
        if not faces:
            if not again:  # no gallery came of it: no lineage may claim the name
                lineage = layout.export_lineage_key(gallery)
                self.objects.delete_versions(
                    [v for v in self.objects.versions(lineage) if v[0] == lineage]
                )
            raise NoEnrolledFacesError(f"collection {collection.name!r} has no enrolled faces")
        meta = GalleryMeta(
            model_id=card.model_id,
            weights_sha256=card.weights_sha256,
            dim=card.embedding_dim,
            threshold=card.threshold,
            subject_scope=collection_scope(collection.name),
        )
        table = build_gallery_table(
            subject_ids=[s for s, _ in faces],
            image_keys=[f.image_key for _, f in faces],
            face_indices=np.zeros(len(faces), dtype=np.int32),
            bboxes=np.array(
                [f.bbox if f.bbox is not None else (0.0,) * 4 for _, f in faces],
                dtype=np.float32,
            ).reshape(len(faces), 4),
            det_scores=np.array(
                [f.det_score if f.det_score is not None else 0.0 for _, f in faces],
                dtype=np.float32,
            ),
            embeddings=np.stack([f.embedding for _, f in faces]),
            meta=meta,
            source_times=[f.created_at or started for _, f in faces],
        )
        part = self.galleries.part_key(gallery, EXPORT_PART)
        written = self.galleries.write_table(part, table)
        self._drop_older_versions(part, written.version_id)
        # Full: the export is one part rewritten whole, and a face it no longer holds (a
        # re-enrolment) must leave the gallery now, not at the daily full run.
        report = self.galleries.compact(
            gallery, erasures=self.erasures, expected_model_id=card.model_id, full=True
        )
        answer = {
            "collection": collection.name,
            "gallery": gallery,
            "model_id": card.model_id,
            "key": report.key,
            "rows": report.rows_out,
            "subjects": report.subjects,
            "erased_dropped": report.deleted_dropped,
            "exported_at": utc_now(),
        }
        self._put_lineage(gallery, answer | {"started_at": started})
        return answer

    def _check_free(self, collection: str, gallery: str) -> bool:
        """Refuse a gallery that is anything but this collection's export; whether it is
        that (an export again) rather than a new name."""
        of = self.exported_from(gallery)
        if of == collection:
            return True
        if of is not None:
            raise GalleryExistsError(f"gallery {gallery!r} is the export of another collection")
        taken = self.objects.versions(layout.gallery_prefix(gallery)) or self.objects.versions(
            f"{layout.UPLOADS_PREFIX}{gallery}/"
        )
        if taken:
            raise GalleryExistsError(f"gallery {gallery!r} exists and is not an export")
        return False

    def _put_lineage(self, gallery: str, doc: dict[str, Any]) -> None:
        self.objects.put_json(layout.export_lineage_key(gallery), doc)

    def _drop_older_versions(self, key: str, kept: str | None) -> None:
        """A re-export leaves no older version of the part: it may hold people erased since
        (an erasure rewrites every version, but nothing needs to keep them)."""
        versions = [v for v in self.objects.versions(key) if v[0] == key and v[1] != kept]
        if kept is not None:
            self.objects.delete_versions(versions)
