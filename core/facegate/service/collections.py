"""Collections as the API and the CLI offer them: create, describe, list, delete, export as
a gallery, attach galleries.

``POST /collections`` and ``facegate collections create`` are one call,
:meth:`CollectionService.create`: the same checks (an installed model, a calibrated FAR)
and the same answer; so for the others. Torch-free: models are known by their cards, never
loaded.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Set
from pathlib import Path
from typing import Any

from facegate.batch.collection_deletion import CollectionDeleter
from facegate.batch.erasure import Eraser
from facegate.errors import (
    CollectionDeletingError,
    ModelMismatchError,
    UnknownCollectionError,
    ValidationError,
)
from facegate.models.card import ModelCard, list_cards
from facegate.service.collection_export import CollectionExporter
from facegate.settings import MultiFacePolicy, Settings
from facegate.storage.collections import (
    COLLECTION_SK,
    DEFAULT_COLLECTION,
    Collection,
    CollectionStore,
    collection_key,
    decode_collection_cursor,
)
from facegate.storage.galleries import GalleryStore, served_meta
from facegate.storage.subject_items import encode_cursor
from facegate.storage.subjects import MAX_LIST_LIMIT, SubjectStore
from facegate.storage.tombstones import Tombstones

#: ``counts(collection) -> (subjects, faces)``: what a collection holds.
Counts = Callable[[str], tuple[int, int]]


def enrolled_counts(subjects: SubjectStore) -> Counts:
    """The counts of each collection, read from the enrolled subjects.

    Pages of the collection's :meth:`SubjectStore.list_subjects`, summing their
    ``face_count`` (the index it reads is eventually consistent, so a subject enrolled a
    moment ago may be missing). Reads every subject's META item: the cost grows with the
    subjects enrolled.
    """

    def counts(name: str) -> tuple[int, int]:
        members = subjects.in_collection(name)
        total_subjects = total_faces = 0
        cursor: str | None = None
        while True:
            page, cursor = members.list_subjects(MAX_LIST_LIMIT, cursor)
            total_subjects += len(page)
            total_faces += sum(s.face_count for s in page)
            if cursor is None:
                return total_subjects, total_faces

    return counts


class CollectionService:
    """Collections in one table, checked against the models installed in ``model_dir`` (the
    API's image and the CLI's machine hold the models they can embed with)."""

    def __init__(
        self,
        store: CollectionStore,
        counts: Counts,
        *,
        model_dir: Path,
        deleter: CollectionDeleter,
        exporter: CollectionExporter,
    ) -> None:
        self.store = store
        self.counts = counts
        self.model_dir = model_dir
        self.deleter = deleter
        self.exporter = exporter

    @classmethod
    def from_settings(cls, settings: Settings) -> CollectionService:
        """The deployment's collections, as the CLI reaches them with the operator's
        credentials (the API builds its own from the process's cached stores)."""
        subjects = SubjectStore.from_settings(settings)
        tombstones = Tombstones.from_settings(settings)
        return cls(
            CollectionStore.from_settings(settings),
            enrolled_counts(subjects),
            model_dir=settings.model_dir,
            deleter=CollectionDeleter.from_settings(
                settings, Eraser.from_settings(settings, tombstones)
            ),
            exporter=CollectionExporter(subjects, GalleryStore.from_settings(settings), tombstones),
        )

    def _answer(self, collection: Collection) -> dict[str, Any]:
        subjects, faces = self.counts(collection.name)
        return collection.to_dict() | {"subjects": subjects, "faces": faces}

    def _installed_card(self, model_id: str) -> ModelCard:
        """The card of ``model_id``; :class:`ValidationError` naming the installed models
        when it is not one of them (as ``POST /reembed`` refuses a model it cannot run)."""
        cards = {card.model_id: card for card in list_cards(self.model_dir)}
        if model_id not in cards:
            raise ValidationError(
                f"model {model_id!r} is not installed here; installed: {', '.join(cards)}"
            )
        return cards[model_id]

    def create(
        self,
        name: str,
        model_id: str | None = None,
        *,
        description: str | None = None,
        threshold: float | None = None,
        far: float | None = None,
        multi_face: MultiFacePolicy | None = None,
    ) -> dict[str, Any]:
        """Create a collection of ``model_id`` (None: the deployment's) and answer it.

        Refused before anything is written when the model is not installed or the card has
        no threshold calibrated for ``far``: a collection whose rule cannot be applied would
        fail every later decision instead. A ``threshold`` is not checked against the
        deployment's minimum here: that floor is a setting that may change, and decisions
        apply it when they are made.
        """
        collection = Collection(
            name,
            self.store.default_model_id if model_id is None else model_id,
            description=description,
            threshold=threshold,
            far=far,
            multi_face=multi_face,
        )
        card = self._installed_card(collection.model_id)
        if collection.far is not None:
            card.threshold_at_far(collection.far)
        return self._answer(self.store.create(collection))

    def describe(self, name: str) -> dict[str, Any]:
        """The collection with its ``subjects`` and ``faces`` counts."""
        return self._answer(self.store.get(name))

    def list(
        self, limit: int = 100, cursor: str | None = None, only: Set[str] | None = None
    ) -> dict[str, Any]:
        """One page of collections (``default`` first) and the cursor of the next; with
        ``only`` (a bound API key's collections), those of them that exist and nothing else."""
        if only is None:
            collections, next_cursor = self.store.list(limit, cursor)
        else:
            collections, next_cursor = self._list_only(only, limit, cursor)
        return {
            "collections": [self._answer(c) for c in collections],
            "next_cursor": next_cursor,
        }

    def _list_only(
        self, only: Set[str], limit: int, cursor: str | None
    ) -> tuple[builtins.list[Collection], str | None]:
        """A page of ``only``'s existing collections, in the store's order (``default``
        first, then by name), read one by one.

        Not the store's listing filtered: its pages run over every tenant's collections, and
        its cursor is the last key it read, which could name a collection of another tenant.
        Here a cursor only ever names a collection of the page (or, after ``default``, no
        name), in the store's cursor format, so either listing's cursor reads in the other.
        A key is bound to at most a hundred collections: one read each is fine.
        """
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= MAX_LIST_LIMIT
        ):
            raise ValidationError(f"limit must be an int in 1..{MAX_LIST_LIMIT}, got {limit!r}")
        others = sorted(n for n in only if n != DEFAULT_COLLECTION)
        if cursor is None:
            names = ([DEFAULT_COLLECTION] if DEFAULT_COLLECTION in only else []) + others
        else:
            after = decode_collection_cursor(cursor)["sk"]["S"].removeprefix(COLLECTION_SK)
            names = [n for n in others if n > after]
        page: builtins.list[Collection] = []
        for name in names:
            if len(page) == limit:
                # "" after ``default``: before every name, as the store's own first cursor.
                last = "" if page[-1].name == DEFAULT_COLLECTION else page[-1].name
                return page, encode_cursor(collection_key(last))
            try:
                page.append(self.store.get(name))
            except UnknownCollectionError:
                continue  # bound before it was made, or since deleted
        return page, None

    def delete(self, name: str) -> tuple[bool, dict[str, Any]]:
        """Delete the collection and erase every subject in it
        (:class:`~facegate.batch.collection_deletion.CollectionDeleter`): ``(True, receipt)``
        when done in the call, ``(False, state)`` when the jobs workers do it."""
        return self.deleter.delete(name)

    def _live(self, name: str) -> Collection:
        """The collection; :class:`CollectionDeletingError` while its deletion runs."""
        collection = self.store.get(name)
        if collection.deleting is not None:
            raise CollectionDeletingError.named(collection.name)
        return collection

    def export(self, name: str, gallery: str) -> dict[str, Any]:
        """Export the collection's enrolled faces as Parquet gallery ``gallery``
        (:mod:`facegate.service.collection_export`)."""
        collection = self._live(name)
        return self.exporter.export(collection, gallery, self._installed_card(collection.model_id))

    def attach(self, name: str, gallery: str) -> dict[str, Any]:
        """Search ``gallery`` in the collection's identify too: it must be built
        (:class:`~facegate.errors.UnknownGalleryError`) and of the collection's model
        (:class:`ModelMismatchError`: its embeddings could not be compared)."""
        collection = self._live(name)
        meta = served_meta(self.exporter.objects, gallery)
        if meta.model_id != collection.model_id:
            raise ModelMismatchError(
                f"gallery {gallery!r} is of model {meta.model_id!r}; collection "
                f"{collection.name!r} is of {collection.model_id!r}"
            )
        return self._answer(self.store.attach(collection.name, gallery))

    def detach(self, name: str, gallery: str) -> dict[str, Any]:
        """Stop searching ``gallery`` in the collection's identify (the gallery stays)."""
        return self._answer(self.store.detach(self._live(name).name, gallery))
