"""Compaction of one gallery on S3: parts -> generations (:mod:`facegate.gallery.generations`).

Three kinds of run, cheapest first:

- **incremental**: the parts the inbox names (a marker per part written since the last
  run, :func:`~facegate.storage.keys.inbox_key`) merged into ``delta.parquet``; the base is
  not read, except its id columns, which the tombstones are checked against. Its cost
  follows the new data plus the delta, which never outgrows :data:`FOLD_FRACTION` of the
  base.
- **fold**: base, delta and new parts merged into a new base (a new generation), the delta
  emptied. When the delta would outgrow that fraction, or when a tombstone names a
  subject whose rows are in the base.
- **full**: every part listed and read, as before generations: with no record of the last
  run, when the base or the delta was written by someone else (an erasure's rewrite), on
  request, and at least every :data:`FULL_EVERY_S` (it sees a part deleted by hand, which
  no marker announces).

Every write is conditional (``If-Match`` on the ETag read, ``If-None-Match: *`` for a new
object): a run that lost a race reads again, so two runs never interleave their writes and
no run writes back rows read before an erasure rewrote the object they came from.
Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from facegate.common import parse_instant, utc_now
from facegate.errors import (
    ModelMismatchError,
    ObjectNotFoundError,
    UnknownGalleryError,
    WriteConflictError,
)
from facegate.gallery.compaction import (
    CompactionReport,
    _compact,
    _Counts,
    _deletion_micros,
    _drop_deleted,
)
from facegate.gallery.format import METADATA_KEY, GalleryMeta
from facegate.gallery.generations import (
    BASE_GENERATION_KEY,
    GENERATION_KEY,
    label_of,
    labelled,
    new_generation,
)
from facegate.lazy import lazy_module
from facegate.storage import keys as layout
from facegate.storage.objects import ObjectInfo
from facegate.storage.tombstones import ErasureLookup, gallery_scope

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from facegate.storage.galleries import GalleryStore
else:
    pa = lazy_module("pyarrow")
    pc = lazy_module("pyarrow.compute")
    pq = lazy_module("pyarrow.parquet")

#: Runs of one gallery that may lose a race for one of its objects in a row before the
#: compaction gives up (a retryable ``write_conflict``): each retry reads again.
COMPACTION_ATTEMPTS = 4
#: ``compaction.json``'s format; a record of another is ignored (a full rebuild).
STATE_FORMAT = 2
#: The delta may hold up to this fraction of the base's rows; past it a run folds. Folding
#: rewrites the base, so over many runs each row is rewritten about 1 / FOLD_FRACTION + 1
#: times less often than if every run rewrote the gallery.
FOLD_FRACTION = 0.25
#: ... and may always hold this many: below it a fold would rewrite a small base for a few
#: rows each run, and reading the delta costs little.
FOLD_MIN_ROWS = 10_000
#: A full rebuild at least this often, whatever the inbox says.
FULL_EVERY_S = 24 * 3600
#: The columns an incremental run reads of the base (for the tombstones and the counts).
BASE_ID_COLUMNS = ("subject_id", "image_key", "face_index", "source_at")


@dataclass(frozen=True)
class _State:
    base_etag: str
    delta_etag: str | None
    generation: str
    full_at: str


@dataclass(frozen=True)
class _Seen:
    """What a run found before it read anything else."""

    base: ObjectInfo | None
    delta: ObjectInfo | None
    markers: dict[str, str]  # inbox marker key -> ETag


def compact_gallery(
    store: GalleryStore,
    gallery: str,
    *,
    erasures: ErasureLookup | None,
    expected_model_id: str | None,
    full: bool,
) -> CompactionReport:
    """One compaction of ``gallery`` (see the module docstring), retried on a lost race."""
    started = time.perf_counter()
    run = _Run(store, gallery, erasures, expected_model_id, started)
    for attempt in range(1, COMPACTION_ATTEMPTS + 1):
        try:
            return run.once(full)
        except WriteConflictError:
            if attempt == COMPACTION_ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


class _Run:
    def __init__(
        self,
        store: GalleryStore,
        gallery: str,
        erasures: ErasureLookup | None,
        expected_model_id: str | None,
        started: float,
    ) -> None:
        self.store = store
        self.objects = store.objects
        self.gallery = gallery
        self.erasures = erasures
        self.expected = expected_model_id
        self.started = started
        self.base_key = layout.gallery_key(gallery)
        self.delta_key = layout.delta_key(gallery)

    # -- the run -----------------------------------------------------------------------

    def once(self, full: bool) -> CompactionReport:
        # Heads and the inbox before any part is read: a part written later has a marker
        # that this run does not delete, so the next run merges it.
        seen = _Seen(
            base=self._head(self.base_key),
            delta=self._head(self.delta_key),
            markers=self.objects.list_etags(layout.inbox_prefix(self.gallery)),
        )
        state = None if full else self._state()
        if (
            state is None
            or seen.base is None
            or state.base_etag != seen.base.etag
            or state.delta_etag != (seen.delta.etag if seen.delta else None)
            or _age_s(state.full_at) >= FULL_EVERY_S
        ):
            return self._full(seen)
        return self._incremental(seen, state)

    def _full(self, seen: _Seen) -> CompactionReport:
        keys = self.store.list_parts(self.gallery)
        if not keys:
            raise UnknownGalleryError(f"gallery {self.gallery} has no parts")
        tables = [self.store.read_table(k) for k in keys]
        deleted = self._deleted(tables)
        table, counts = _compact(tables, keys, deleted, self.expected)
        generation = new_generation()
        base = self._write(self.base_key, labelled(table, GENERATION_KEY, generation), seen.base)
        delta_etag = self._settle_delta(seen.delta, generation, table)
        self._commit(_State(base.etag, delta_etag, generation, utc_now()), seen, set(keys))
        return self._report("full", len(keys), counts, table.num_rows, table["subject_id"])

    def _incremental(self, seen: _Seen, state: _State) -> CompactionReport:
        assert seen.base is not None
        parts = self._inbox_parts(seen.markers)
        keys = sorted(parts)
        tables = [parts[k] for k in keys]
        delta = self._read_delta(seen.delta, state.generation)
        base_ids = self._read_base_ids(seen.base)
        deleted = self._deleted([*tables, *([delta] if delta is not None else []), base_ids])
        base_hit = _drops(base_ids, deleted)
        grown = (delta.num_rows if delta is not None else 0) + sum(t.num_rows for t in tables)
        if base_hit or grown > max(FOLD_FRACTION * base_ids.num_rows, FOLD_MIN_ROWS):
            return self._fold(seen, state, keys, tables, delta, deleted)
        if not tables and (delta is None or not _drops(delta, deleted)):
            # Nothing new, no one erased: nothing written.
            overlap = _overlap(base_ids, delta) if delta is not None else 0
            served = base_ids.num_rows - overlap + (delta.num_rows if delta is not None else 0)
            return self._report(
                "incremental",
                0,
                _Counts(served + overlap, overlap, 0),
                served,
                _subjects(base_ids, delta),
            )
        merged, counts = (
            _compact(tables, keys, deleted, self.expected, base=delta)
            if tables
            else _compact([delta], [self.delta_key], deleted, self.expected)  # type: ignore[list-item]
        )
        self._check_model(base_ids, merged)
        merged = labelled(merged, BASE_GENERATION_KEY, state.generation)
        written = self._write(self.delta_key, merged, seen.delta)
        self._unchanged_since(self.base_key, seen.base)
        self._commit(replace(state, delta_etag=written.etag), seen, set(keys))
        overlap = _overlap(base_ids, merged)
        rows_out = base_ids.num_rows - overlap + merged.num_rows
        counts = _Counts(
            rows_in=base_ids.num_rows + counts.rows_in,
            duplicates_dropped=counts.duplicates_dropped + overlap,
            deleted_dropped=counts.deleted_dropped,
        )
        return self._report("incremental", len(keys), counts, rows_out, _subjects(base_ids, merged))

    def _fold(
        self,
        seen: _Seen,
        state: _State,
        keys: list[str],
        tables: list[pa.Table],
        delta: pa.Table | None,
        deleted: dict[str, str],
    ) -> CompactionReport:
        """Base, delta and the new parts into a new base; the parts win over the delta,
        the delta over the base, as in the runs that would have merged them one by one."""
        assert seen.base is not None
        base = self.store.read_table(self.base_key)
        newer, first = (
            _compact(tables, keys, deleted, self.expected, base=delta) if tables else (delta, None)
        )
        if newer is not None:
            table, second = _compact([newer], [self.delta_key], deleted, self.expected, base=base)
        else:
            table, second = _compact([base], [self.base_key], deleted, self.expected)
        # ``first`` turned its rows_in into ``newer``'s rows, less what it dropped.
        extra_dup = first.duplicates_dropped if first is not None else 0
        extra_del = first.deleted_dropped if first is not None else 0
        counts = _Counts(
            rows_in=second.rows_in + extra_dup + extra_del,
            duplicates_dropped=second.duplicates_dropped + extra_dup,
            deleted_dropped=second.deleted_dropped + extra_del,
        )
        generation = new_generation()
        written = self._write(self.base_key, labelled(table, GENERATION_KEY, generation), seen.base)
        self._unchanged_since(self.delta_key, seen.delta)
        delta_etag = self._settle_delta(seen.delta, generation, table)
        self._commit(
            replace(state, base_etag=written.etag, delta_etag=delta_etag, generation=generation),
            seen,
            set(keys),
        )
        return self._report("fold", len(keys), counts, table.num_rows, table["subject_id"])

    def _unchanged_since(self, key: str, seen: ObjectInfo | None) -> None:
        """After a write conditional on one generation: the other one must still be as this
        run read it. If it was rewritten meanwhile (an erasure's rewrite, say), what was
        just written may hold rows read before that rewrite, so the run starts again, as a
        full one (the record no longer matches), which replaces what it wrote."""
        now = self._head(key)
        if (now.etag if now else None) != (seen.etag if seen else None):
            raise WriteConflictError(f"{key} changed during the compaction")

    # -- the delta -----------------------------------------------------------------------

    def _settle_delta(self, seen: ObjectInfo | None, generation: str, base: pa.Table) -> str | None:
        """After a new base is written: the delta this run read (``seen``) is in it, so it
        is emptied; one another run wrote since (on the old base, so holding rows newer
        than this run saw) is relabelled onto the new base, its rows kept. Conditional
        like every write: a delta that changes meanwhile is looked at again."""
        for _ in range(COMPACTION_ATTEMPTS):
            current = self._head(self.delta_key)
            if current is None:
                return None
            if seen is not None and current.etag == seen.etag:
                table = _emptied(base)
            else:
                table = self.store.read_table(self.delta_key)
                if label_of(table.schema, BASE_GENERATION_KEY) == generation:
                    return current.etag
            try:
                return self._write(
                    self.delta_key, labelled(table, BASE_GENERATION_KEY, generation), current
                ).etag
            except WriteConflictError:
                continue
        raise WriteConflictError(f"delta.parquet of gallery {self.gallery} kept changing")

    def _read_delta(self, info: ObjectInfo | None, generation: str) -> pa.Table | None:
        if info is None:
            return None
        table = self.store.read_table(self.delta_key)
        return table if label_of(table.schema, BASE_GENERATION_KEY) == generation else None

    def _read_base_ids(self, info: ObjectInfo) -> pa.Table:
        """The base's id columns only, by ranged reads of that version."""
        with self.objects.open(self.base_key, etag=info.etag) as reader:
            return pq.read_table(pa.PythonFile(reader, mode="r"), columns=list(BASE_ID_COLUMNS))

    # -- the inbox -----------------------------------------------------------------------

    def _inbox_parts(self, markers: dict[str, str]) -> dict[str, pa.Table]:
        """``part key -> table`` of the parts the markers name; a marker whose part is not
        there (its writer has not written it yet) is skipped and kept."""
        parts = {}
        for key in sorted(markers):
            part = layout.part_of_marker(key)
            try:
                data = self.objects.get(part).body
            except ObjectNotFoundError:
                continue
            parts[part] = self.store.parse_table(part, data)
        return parts

    def _commit(self, state: _State, seen: _Seen, merged: set[str]) -> None:
        """Record what was written, then drop the markers of the parts merged, each only if
        it is still the one this run listed (a part written again since has a new marker,
        which stays for the next run). A run that stops in between merges them again: a
        part's rows replace themselves."""
        self.objects.put_json(
            layout.compaction_state_key(self.gallery),
            {
                "format": STATE_FORMAT,
                "base_etag": state.base_etag,
                "delta_etag": state.delta_etag,
                "generation": state.generation,
                "full_at": state.full_at,
            },
        )
        for key, etag in seen.markers.items():
            if layout.part_of_marker(key) in merged:
                self.objects.delete_if_match(key, etag)

    def _state(self) -> _State | None:
        doc = self.objects.get_json(layout.compaction_state_key(self.gallery), "compaction state")
        if doc is None or doc.get("format") != STATE_FORMAT:
            return None
        try:
            return _State(
                base_etag=str(doc["base_etag"]),
                delta_etag=None if doc["delta_etag"] is None else str(doc["delta_etag"]),
                generation=str(doc["generation"]),
                full_at=str(doc["full_at"]),
            )
        except KeyError:
            return None

    # -- helpers -------------------------------------------------------------------------

    def _head(self, key: str) -> ObjectInfo | None:
        try:
            return self.objects.head(key)
        except ObjectNotFoundError:
            return None

    def _write(self, key: str, table: pa.Table, seen: ObjectInfo | None) -> ObjectInfo:
        if seen is None:
            return self.store.write_table(key, table, if_none_match="*")
        return self.store.write_table(key, table, if_match=seen.etag)

    def _deleted(self, tables: Sequence[pa.Table]) -> dict[str, str]:
        if self.erasures is None:
            return {}
        subjects = {str(s) for t in tables for s in pc.unique(t["subject_id"]).to_pylist()}
        return self.erasures.in_scope(subject_scope(self.gallery, tables), subjects)

    def _check_model(self, base_ids: pa.Table, delta: pa.Table) -> None:
        raw = (base_ids.schema.metadata or {}).get(METADATA_KEY)
        if raw is None:
            return
        base, new = (
            GalleryMeta.from_json(raw),
            GalleryMeta.from_json(delta.schema.metadata[METADATA_KEY]),
        )
        for name in ("model_id", "weights_sha256", "dim"):
            if getattr(base, name) != getattr(new, name):
                raise ModelMismatchError(
                    f"new parts of gallery {self.gallery} have {name} {getattr(new, name)!r} "
                    f"but gallery.parquet has {getattr(base, name)!r}: parts of different "
                    "models cannot be compacted together"
                )

    def _report(
        self,
        mode: str,
        parts_read: int,
        counts: _Counts,
        rows_out: int,
        subjects: pa.ChunkedArray[Any] | pa.Array[Any],
    ) -> CompactionReport:
        return CompactionReport(
            gallery=self.gallery,
            key=self.base_key,
            mode=mode,
            parts_read=parts_read,
            rows_in=counts.rows_in,
            rows_out=rows_out,
            duplicates_dropped=counts.duplicates_dropped,
            deleted_dropped=counts.deleted_dropped,
            subjects=len(pc.unique(subjects)) if len(subjects) else 0,
            seconds=round(time.perf_counter() - self.started, 3),
        )


def _age_s(instant: str) -> float:
    then = parse_instant(instant, "last full compaction")
    now = parse_instant(utc_now(), "now")
    return (now - then) / timedelta(seconds=1)


def _drops(table: pa.Table, deleted: dict[str, str]) -> bool:
    if not deleted:
        return False
    return _drop_deleted(table, _deletion_micros(deleted)).num_rows < table.num_rows


def _overlap(base_ids: pa.Table, delta: pa.Table) -> int:
    """Rows of the base that a delta row replaces (same ``(image_key, face_index)``)."""
    if delta.num_rows == 0 or base_ids.num_rows == 0:
        return 0
    names = ["image_key", "face_index"]
    left = base_ids.select(names).replace_schema_metadata(None)
    right = delta.select(names).replace_schema_metadata(None)
    return left.join(right, keys=names, join_type="inner").num_rows


def _subjects(base_ids: pa.Table, delta: pa.Table | None) -> pa.ChunkedArray[Any]:
    columns = [base_ids["subject_id"], *([delta["subject_id"]] if delta is not None else [])]
    return pa.chunked_array([c for col in columns for c in col.chunks], type=pa.string())


def _emptied(table: pa.Table) -> pa.Table:
    """A valid gallery table with ``table``'s schema and footer and no rows."""
    empty = table.slice(0, 0)
    meta = replace(GalleryMeta.from_json(table.schema.metadata[METADATA_KEY]), row_count=0)
    return empty.replace_schema_metadata({**table.schema.metadata, **meta.to_schema_metadata()})


def subject_scope(gallery: str, tables: Sequence[pa.Table] = ()) -> str:
    """Whose subjects the gallery's rows are, for erasure: the ``subject_scope`` its newest
    table's metadata names (a gallery re-embedded from the enrolled subjects or from another
    gallery), else its own, ``gallery:<g>``."""
    return scope_of(gallery, [table.schema for table in tables])


def scope_of(gallery: str, schemas: Sequence[pa.Schema]) -> str:
    newest: GalleryMeta | None = None
    for schema in schemas:
        raw = (schema.metadata or {}).get(METADATA_KEY)
        if raw is None:
            continue
        meta = GalleryMeta.from_json(raw)
        if newest is None or parse_instant(meta.created_at, "created_at") >= parse_instant(
            newest.created_at, "created_at"
        ):
            newest = meta
    if newest is not None and newest.subject_scope is not None:
        return newest.subject_scope
    return gallery_scope(gallery)


__all__ = ["COMPACTION_ATTEMPTS", "compact_gallery", "scope_of", "subject_scope"]
