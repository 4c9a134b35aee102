"""A gallery as two generations: ``gallery.parquet`` (the base) and ``delta.parquet``. Torch-free.

Rewriting the whole gallery for every hundred new parts makes compaction's cost follow the
gallery's size, not the new data: at 100,000 rows most of an incremental run was spent
writing ``gallery.parquet`` again. So a compaction merges what is new into the small delta
(read, merged and written whole: "one merge level"), and folds the delta into the base only
when the delta has grown to a fraction of it.

Each base carries a generation id in its footer (:data:`GENERATION_KEY`), each delta the id
of the base it was merged onto (:data:`BASE_GENERATION_KEY`). A reader serves the base with
the delta on top, the delta's rows winning, only while the two ids agree: a delta left
behind by a fold that has already written its new base is ignored, so no row is counted
twice. Both ids live in the Parquet schema metadata, which an erasure's rewrite keeps, so
the pair survives an erasure rewriting both files.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from facegate.gallery.compaction import _compact

if TYPE_CHECKING:
    import pyarrow as pa

#: Footer key of a base: its generation id.
GENERATION_KEY = b"facegate.generation"
#: Footer key of a delta: the generation id of the base it applies to.
BASE_GENERATION_KEY = b"facegate.base_generation"


def new_generation() -> str:
    """A fresh generation id (random: two folds racing never mint the same one)."""
    return uuid.uuid4().hex


def labelled(table: pa.Table, key: bytes, generation: str) -> pa.Table:
    """``table`` with ``key`` set to ``generation`` in its schema metadata."""
    return table.replace_schema_metadata(
        {**(table.schema.metadata or {}), key: generation.encode()}
    )


def label_of(schema: pa.Schema, key: bytes) -> str | None:
    raw = (schema.metadata or {}).get(key)
    return raw.decode() if raw is not None else None


def applies(base: pa.Schema, delta: pa.Schema) -> bool:
    """Whether ``delta`` was merged onto this ``base`` (a base without an id, from before
    generations, takes no delta)."""
    generation = label_of(base, GENERATION_KEY)
    return generation is not None and label_of(delta, BASE_GENERATION_KEY) == generation


def merge_generations(base: pa.Table, delta: pa.Table | None) -> pa.Table:
    """The gallery a reader serves: ``base`` with ``delta`` on top when it applies (per
    ``(image_key, face_index)`` the delta's row wins, as a later part's does in compaction),
    sorted as compaction sorts; ``base`` itself otherwise. The result keeps the base's
    generation id, so a fold can tell which delta it covers."""
    if delta is None or not applies(base.schema, delta.schema):
        return base
    if delta.num_rows == 0:
        return base
    table, _ = _compact([delta], ["delta.parquet"], None, None, base=base)
    return labelled(table, GENERATION_KEY, label_of(base.schema, GENERATION_KEY) or "")
