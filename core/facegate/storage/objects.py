"""S3 objects: a reference to one object version. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass

# --------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectRef:
    """One uploaded object version, as its notification names it.

    ``key`` is decoded (notifications URL-encode it). ``etag`` carries no quotes.
    ``version_id`` is None in an unversioned bucket; the ``"null"`` version of a bucket whose
    versioning is suspended is None too, since it is overwritten in place like an
    unversioned object and only its ``etag`` tells two uploads apart.
    """

    bucket: str
    key: str
    version_id: str | None
    etag: str | None
    size: int
