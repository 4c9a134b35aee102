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
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from facegate.errors import ModelMismatchError
from facegate.gallery.meta import METADATA_KEY, GalleryMeta
from facegate.gallery.table import validate_gallery_table
from facegate.lazy import lazy_module

if TYPE_CHECKING:
    import pyarrow as pa
else:
    pa = lazy_module("pyarrow")

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


def merge_generations(base: pa.Table, delta: pa.Table | None) -> tuple[pa.Table, np.ndarray]:
    """The gallery a reader serves, and where the delta's rows are in it.

    ``base`` with ``delta`` on top when it applies: a delta row replaces the base row of the
    same ``(image_key, face_index)`` in place (a later part's row wins, as in compaction),
    and the others follow the base's rows in the delta's order. So the base's rows keep
    their positions, and an ANN index built over the base alone still names them: a search
    rescores the returned positions (the delta's, which the index does not know) exactly.
    ``base`` itself and no positions when the delta does not apply or is empty. The table
    has the delta's footer (the newer threshold), counting the view's rows.
    """
    none = np.zeros(0, dtype=np.int64)
    if delta is None or delta.num_rows == 0 or not applies(base.schema, delta.schema):
        return base, none
    validate_gallery_table(delta, expected_model_id=None, check_norms=False)
    base_meta = validate_gallery_table(base, expected_model_id=None, check_norms=False)
    delta_meta = GalleryMeta.from_json(delta.schema.metadata[METADATA_KEY])
    for name in ("model_id", "weights_sha256", "dim"):
        if getattr(base_meta, name) != getattr(delta_meta, name):
            raise ModelMismatchError(
                f"delta.parquet has {name} {getattr(delta_meta, name)!r} but gallery.parquet "
                f"has {getattr(base_meta, name)!r}"
            )
    n_base, n_delta = base.num_rows, delta.num_rows
    keys = ["image_key", "face_index"]
    left = pa.table({k: delta[k] for k in keys}).append_column(
        "_d", pa.array(np.arange(n_delta, dtype=np.int64))
    )
    right = pa.table({k: base[k] for k in keys}).append_column(
        "_b", pa.array(np.arange(n_base, dtype=np.int64))
    )
    joined = left.join(right, keys=keys, join_type="left outer", use_threads=False)
    d_rows = joined["_d"].to_numpy()
    b_rows = joined["_b"].to_numpy(zero_copy_only=False)  # NaN (float) where no base row
    replaced = ~np.isnan(b_rows.astype(np.float64))
    positions = np.empty(n_delta, dtype=np.int64)
    positions[d_rows[replaced]] = b_rows[replaced].astype(np.int64)
    appended = np.sort(d_rows[~replaced])
    positions[appended] = n_base + np.arange(appended.size, dtype=np.int64)
    # Row r of the view is row take[r] of base ++ delta.
    take = np.concatenate([np.arange(n_base, dtype=np.int64), np.zeros(appended.size, np.int64)])
    take[positions] = n_base + np.arange(n_delta, dtype=np.int64)
    columns = base.schema.remove_metadata().names
    stacked = pa.concat_tables(
        [
            base.select(columns).replace_schema_metadata(None),
            delta.select(columns).replace_schema_metadata(None),
        ]
    )
    view = stacked.take(pa.array(take))
    meta = replace(delta_meta, row_count=view.num_rows)
    metadata = {
        **(base.schema.metadata or {}),
        **(delta.schema.metadata or {}),
        **meta.to_schema_metadata(),
    }
    metadata[GENERATION_KEY] = base.schema.metadata[GENERATION_KEY]
    metadata.pop(BASE_GENERATION_KEY, None)
    return view.replace_schema_metadata(metadata), np.sort(positions)
