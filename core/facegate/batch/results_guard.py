"""A job's results against the erasures made while it ran. Torch-free.

An erasure scrubs the results a job has written (:mod:`facegate.batch.erase_jobs`), but a
job still running may write more afterwards: a chunk that claimed the person from a manifest
row read before the erasure, or decided against a gallery loaded before its rewrite, or an
aggregation that read its chunk tables before they were scrubbed. So every results table a
job writes (a chunk's, the aggregation's ``results.parquet``) is checked against the
tombstones of the people it names, before it is written and again right after (the embedding
job's pattern for gallery parts: an erasure between the check and the write is seen by the
second check, and the version written is replaced).

A row naming a person erased from the row's gallery at or after the job was created is
written as the gallery without them would have answered it: an identify row without them in
its ranks (decided again on the ranks left), a row claiming them as a failed row, reason
:data:`ERASED`, naming no one (its row number, mode and gallery stay, so the job's rows
still add up; not its probe key, which may be named after the person). A tombstone
older than the job does not count: the job was created after that erasure, and any person of
that id it names was enrolled or uploaded again since (job times are whole seconds: an
erasure within the second the job was created counts as made while it ran). The gallery's
scope is whose subjects its rows are (``gallery:<g>``, or the source's for a re-embedded
gallery: :func:`facegate.storage.galleries.subject_scope`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa

from facegate.batch.results import FAILED, build_results_table, results_to_parquet
from facegate.common import parse_instant
from facegate.storage.objects import PARQUET_TYPE, ObjectStore
from facegate.storage.tombstones import Tombstones

#: A check of a table: the table without what it must not hold, and how many rows changed.
Check = Callable[[pa.Table], tuple[pa.Table, int]]

#: The ``reason`` of a row whose person was erased while its job ran.
ERASED = "subject_erased"
_DETAIL = "a person this row named was erased while the job ran"


def named_subjects(record: Mapping[str, Any]) -> set[str]:
    """Every subject a result row names: claimed, best, ranked."""
    names = {record.get("claimed_subject"), record.get("best_subject")}
    names.update(rank["subject_id"] for rank in record.get("ranks") or ())
    return {n for n in names if isinstance(n, str) and n}


def erased_since(
    table: pa.Table, tombstones: Tombstones, since: str, scope_of: Callable[[str], str]
) -> set[tuple[str, str]]:
    """``(gallery, subject)`` of the table's rows whose subject was erased from the
    gallery's scope (``scope_of(gallery)``) at or after ``since``: one consistent batch read
    of tombstones per gallery."""
    start = parse_instant(since, "the job's creation time")
    by_gallery: dict[str, set[str]] = {}
    for record in table.to_pylist():
        by_gallery.setdefault(record["gallery"], set()).update(named_subjects(record))
    erased: set[tuple[str, str]] = set()
    for gallery, subjects in sorted(by_gallery.items()):
        if not subjects:
            continue
        found = tombstones.in_scope(scope_of(gallery), subjects)
        erased.update(
            (gallery, subject)
            for subject, when in found.items()
            if parse_instant(when, "erasure time") >= start
        )
    return erased


def without_erased(table: pa.Table, erased: set[tuple[str, str]]) -> tuple[pa.Table, int]:
    """The table as the gallery without the erased ``(gallery, subject)`` would have
    answered: an identify row loses them from its ranks (the next one up may be identified),
    a row claiming one of them is failed as :data:`ERASED`, naming no one. The count of rows
    changed."""
    if not erased:
        return table, 0
    records, changed = [], 0
    for record in table.to_pylist():
        gone = {s for s in named_subjects(record) if (record["gallery"], s) in erased}
        if gone:
            record = (
                _failed(record) if record["claimed_subject"] in gone else _reranked(record, gone)
            )
            changed += 1
        records.append(record)
    if not changed:
        return table, 0
    return build_results_table(records), changed


def _failed(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "row": record["row"],
        "probe": "",  # a probe's key may be named after the person
        "mode": record["mode"],
        "gallery": record["gallery"],
        "decision": FAILED,
        "reason": ERASED,
        "detail": _DETAIL,
    }


def _reranked(record: Mapping[str, Any], gone: set[str]) -> dict[str, Any]:
    """An identify row without ``gone`` in its ranks, decided again on what is left (as
    :func:`facegate.batch.results.identify_record` decides)."""
    ranks = [r for r in record["ranks"] or () if r["subject_id"] not in gone]
    top = ranks[0] if ranks else None
    identified = top is not None and top["similarity"] >= record["threshold"]
    return {
        **record,
        "decision": "identified" if identified else "not_identified",
        "similarity": top["similarity"] if top else None,
        "best_subject": top["subject_id"] if identified and top else None,
        "ranks": ranks,
    }


def guard(
    table: pa.Table, tombstones: Tombstones, since: str, scope_of: Callable[[str], str]
) -> tuple[pa.Table, int]:
    """:func:`without_erased` of the erasures made at or after ``since``."""
    return without_erased(table, erased_since(table, tombstones, since, scope_of))


def write_checked(objects: ObjectStore, key: str, table: pa.Table, check: Check) -> pa.Table:
    """Write a results table ``check``-ed before and again after the write; when the second
    check changes it (an erasure between the two), the checked table replaces it and the
    version written is destroyed. An erasure records its tombstone before it lists the
    results, so either it lists this version and scrubs it, or the second check sees the
    tombstone. The table as it stands."""
    table, _ = check(table)
    written = objects.put(key, results_to_parquet(table), content_type=PARQUET_TYPE)
    again, changed = check(table)
    if changed:
        objects.put(key, results_to_parquet(again), content_type=PARQUET_TYPE)
        if written.version_id is not None:
            objects.delete_versions([(key, written.version_id)])
    return again
