"""Enrolment photos that no face item references, destroyed for good. Torch-free.

An enrolment stores its photos under ``enrolments/<collection>/<subject_id>/`` first and writes the
subject's items after (:meth:`FaceService.enrol`); on a failure it erases the photos it
stored. A process killed in between (a Lambda timeout, out of memory) cannot, and leaves a
photo that no item names: biometric data past its purpose, which no erasure finds either
(``DELETE /subjects/{id}`` of a subject without items answers 404). The hourly compaction
sweeps them (:class:`OrphanPhotoSweeper`): every version and delete marker of a key that no
``FACE#`` item of its subject (in its collection) references and that nothing has written
for ``min_age``.

Races. A sweep reads the clock (``now``) first, then lists a subject's versions, then
queries the subject's items (strongly consistent), then destroys only the versions it
listed:

- An enrolment writes its photos and commits its items within one invocation, and no
  invocation outlives :data:`~facegate.storage.tombstones.DELETION_LEASE` (Lambda's hard
  limit), which ``min_age`` may not undercut. A key whose newest version or marker is older
  than ``now - min_age`` was written by an enrolment that has either committed before
  ``now`` (its item is found by the query, which comes after ``now``: the key stays) or was
  killed and will never write (the key is an orphan). An enrolment still in flight wrote its
  photos less than ``min_age`` ago, and they are left alone, referenced or not. ``min_age``
  is at least :data:`MIN_AGE_FLOOR`, so this holds whatever a deployment configures.
- A version written after the listing (a key is a fresh face id, so only the same
  enrolment's retried put could) is never destroyed: only listed version ids are.
- A DELETE of the subject removes the photos before the items
  (:meth:`FaceService.delete_subject`), so a key the query no longer finds referenced is one
  that DELETE is erasing anyway; destroying a version twice is no error.

No enrolment fence is read or moved: the sweep never touches what an enrolment may still
commit, and an erasure's tombstone is not this module's concern.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from itertools import groupby

from facegate.common import ID_PATTERN
from facegate.errors import ValidationError
from facegate.storage.keys import ENROLMENT_PREFIX
from facegate.storage.objects import ObjectVersion
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import SubjectStore
from facegate.storage.tombstones import DELETION_LEASE

#: How long an unreferenced photo is left alone. An enrolment is bounded by the API's 30 s
#: timeout; an hour leaves room for clock skew and any slower writer.
DEFAULT_MIN_AGE = timedelta(hours=1)
#: The least ``min_age``: Lambda's hard limit on one invocation, so that no writer of a
#: photo old enough to be swept can still be running, and five minutes for the clocks of S3
#: (``LastModified``) and of the sweeping function to disagree.
MIN_AGE_FLOOR = DELETION_LEASE + timedelta(minutes=5)


@dataclass(frozen=True)
class OrphanSweep:
    """What one sweep did, in counts only: keys name subjects, and logs take this as it is.

    ``subjects``: subject folders examined; ``subjects_touched``: those with an orphan
    destroyed; ``objects_deleted``: distinct keys destroyed; ``versions_deleted``: their
    versions and delete markers; ``keys_skipped``: keys outside any valid
    ``enrolments/<collection>/<subject_id>/`` folder (not FaceGate's, or of the layout before
    collections: left alone); ``complete``: False
    when the sweep stopped early (out of time), the rest waiting for the next run.
    """

    subjects: int = 0
    subjects_touched: int = 0
    objects_deleted: int = 0
    versions_deleted: int = 0
    keys_skipped: int = 0
    complete: bool = True

    def to_dict(self) -> dict[str, int | bool]:
        return asdict(self)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _subject_of(entry: ObjectVersion) -> tuple[str, str] | None:
    """``(collection, subject_id)`` of ``enrolments/<collection>/<subject_id>/<name>``; None
    for a key outside any valid one (``enrolments/loose.jpg``, a folder that is no id, a
    photo of the layout before collections, which :mod:`facegate.storage.migrate` moves)."""
    parts = entry.key[len(ENROLMENT_PREFIX) :].split("/")
    if len(parts) != 3 or not all(ID_PATTERN.match(p) for p in parts[:2]):
        return None
    return parts[0], parts[1]


class OrphanPhotoSweeper:
    """Finds and destroys orphaned enrolment photos (see the module docstring for the rules).

    ``clock`` gives the sweep's ``now`` (timezone-aware); tests move it instead of waiting.
    """

    def __init__(
        self,
        photos: PhotoStore,
        subjects: SubjectStore,
        *,
        min_age: timedelta = DEFAULT_MIN_AGE,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if not isinstance(min_age, timedelta) or min_age < MIN_AGE_FLOOR:
            raise ValidationError(
                f"an orphaned photo's minimum age is at least {MIN_AGE_FLOOR} (Lambda's limit "
                "on one invocation): a younger one may belong to an enrolment still running",
                detail=repr(min_age),
            )
        self.photos = photos
        self.subjects = subjects
        self.min_age = min_age
        self.clock = clock

    def sweep(self, *, should_stop: Callable[[], bool] | None = None) -> OrphanSweep:
        """Destroy every orphan under ``enrolments/``, one subject at a time.

        One listing of the prefix, page by page (keys come sorted, so a subject's keys are
        consecutive); per subject with a key old enough, one consistent query of its items.
        ``should_stop`` is asked before each subject: True ends the sweep there
        (``complete`` False), so a run never outlives its invocation midway through a delete.
        """
        now = self.clock()
        if now.tzinfo is None:
            raise ValidationError("the sweep's clock must be timezone-aware")
        cutoff = now - self.min_age
        counts = {"subjects": 0, "touched": 0, "objects": 0, "versions": 0, "skipped": 0}
        complete = True
        listing = self.photos.objects.iter_versions(ENROLMENT_PREFIX)
        for folder, group in groupby(listing, key=_subject_of):
            entries = list(group)
            if folder is None:
                counts["skipped"] += len({e.key for e in entries})
                continue
            if should_stop is not None and should_stop():
                complete = False
                break
            counts["subjects"] += 1
            destroyed = self._sweep_subject(folder, entries, cutoff)
            if destroyed:
                counts["touched"] += 1
                counts["objects"] += len({key for key, _ in destroyed})
                counts["versions"] += len(destroyed)
        return OrphanSweep(
            subjects=counts["subjects"],
            subjects_touched=counts["touched"],
            objects_deleted=counts["objects"],
            versions_deleted=counts["versions"],
            keys_skipped=counts["skipped"],
            complete=complete,
        )

    def _sweep_subject(
        self, folder: tuple[str, str], entries: list[ObjectVersion], cutoff: datetime
    ) -> list[tuple[str, str]]:
        """Destroy the subject's listed versions of keys last written before ``cutoff`` that
        no face item references; return what was destroyed. No query when no key is old
        enough: a subject enrolling right now costs nothing."""
        newest: dict[str, datetime] = {}
        for entry in entries:
            last = newest.get(entry.key)
            if last is None or entry.last_modified > last:
                newest[entry.key] = entry.last_modified
        old = {key for key, written in newest.items() if written < cutoff}
        if not old:
            return []
        # After the listing and after ``now``: an enrolment that wrote an old key and
        # committed has its item here (the ordering argued in the module docstring).
        collection, subject_id = folder
        orphans = old - self.subjects.in_collection(collection).image_keys(subject_id)
        targets = [(e.key, e.version_id) for e in entries if e.key in orphans]
        self.photos.objects.delete_versions(targets)
        return targets
