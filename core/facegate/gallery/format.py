"""The Parquet gallery format: gallery files written and read, checked against their footer.

A gallery is the unit that batch enrolment writes and search reads, possibly years and
model upgrades apart. So the file carries everything needed to refuse misuse on its own
(:class:`~facegate.gallery.meta.GalleryMeta` in the footer), and every read checks it.

The format's parts, each in its module: the footer metadata (``gallery.meta``), the one
column schema and table validation (``gallery.table``), the rejects table
(``gallery.rejects``). Their public names are importable from here too (``__all__``): the one
place the rest of facegate imports the format from.

This module must never import torch, directly or indirectly: it runs in the light search
functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeAlias

from facegate.errors import StorageError, ValidationError
from facegate.gallery.meta import METADATA_KEY, METRIC, SCHEMA_VERSION, GalleryMeta, is_int
from facegate.gallery.rejects import build_rejects_table, rejects_from_errors, rejects_schema
from facegate.gallery.table import (
    NORM_TOLERANCE,
    build_gallery_table,
    gallery_embeddings,
    gallery_meta_from_schema,
    gallery_schema,
    validate_embeddings,
    validate_gallery_table,
)
from facegate.lazy import lazy_module

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq
else:
    pa = lazy_module("pyarrow")
    pq = lazy_module("pyarrow.parquet")

__all__ = [
    "DEFAULT_ROW_GROUP_SIZE",
    "METADATA_KEY",
    "METRIC",
    "NORM_TOLERANCE",
    "SCHEMA_VERSION",
    "GalleryMeta",
    "Source",
    "build_gallery_table",
    "build_rejects_table",
    "gallery_embeddings",
    "gallery_meta_from_schema",
    "gallery_schema",
    "open_gallery",
    "read_gallery",
    "read_gallery_meta",
    "rejects_from_errors",
    "rejects_schema",
    "validate_embeddings",
    "validate_gallery_table",
    "write_gallery",
]

#: 65536 rows of 512-d float32 is 128 MiB of embeddings per row group before compression:
#: big enough for efficient scans, small enough that streaming search holds one at a time.
DEFAULT_ROW_GROUP_SIZE = 65536

#: Where a gallery is read from or written to: a path, or an open binary file. (Quoted: the
#: alias is for type checkers, and evaluating it would import pyarrow.)
Source: TypeAlias = "str | Path | BinaryIO | pa.NativeFile"


def _open_parquet(source: Source) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(source, memory_map=isinstance(source, (str, os.PathLike)))
    except OSError as exc:
        raise StorageError(f"cannot read gallery {source!r}", detail=str(exc)) from exc
    except pa.ArrowException as exc:
        raise ValidationError(f"not a Parquet file: {source!r}", detail=str(exc)) from exc


def write_gallery(
    table: pa.Table, where: Source, *, row_group_size: int = DEFAULT_ROW_GROUP_SIZE
) -> GalleryMeta:
    """Validate ``table`` and write it as zstd-compressed Parquet; return its metadata.

    Dictionary encoding and statistics are limited to the id columns: on float vectors they
    cost write time and footer size and never help a reader.
    """
    if not is_int(row_group_size) or row_group_size <= 0:
        raise ValidationError(f"row_group_size must be a positive int, got {row_group_size!r}")
    meta = validate_gallery_table(table)
    try:
        pq.write_table(
            table,
            where,
            compression="zstd",
            row_group_size=row_group_size,
            # pyarrow takes column names here too; its stubs know only a bool.
            use_dictionary=["subject_id", "image_key"],  # type: ignore[arg-type]
            write_statistics=["subject_id", "image_key", "face_index", "det_score"],
        )
    except OSError as exc:
        raise StorageError(f"cannot write gallery {where!r}", detail=str(exc)) from exc
    return meta


def open_gallery(
    source: Source, expected_model_id: str | None = None
) -> tuple[GalleryMeta, pq.ParquetFile]:
    """Open a gallery and check its footer without reading rows; for streaming readers."""
    pf = _open_parquet(source)
    return gallery_meta_from_schema(pf.schema_arrow, expected_model_id), pf


def read_gallery_meta(source: Source, expected_model_id: str | None = None) -> GalleryMeta:
    """Read and check only the footer: cheap enough to call before deciding to load."""
    return open_gallery(source, expected_model_id)[0]


def read_gallery(
    source: Source, expected_model_id: str | None = None
) -> tuple[GalleryMeta, pa.Table]:
    """Read a whole gallery after checking its footer.

    Raises :class:`ModelMismatchError` when ``expected_model_id`` is given and differs,
    :class:`ValidationError` for missing or invalid metadata, an unknown schema version,
    wrong columns, a row count that disagrees with the metadata or null embeddings, and
    :class:`StorageError` when the file cannot be read.
    """
    meta, pf = open_gallery(source, expected_model_id)
    try:
        table = pf.read()
    except OSError as exc:
        raise StorageError(f"cannot read gallery {source!r}", detail=str(exc)) from exc
    except pa.ArrowException as exc:
        raise ValidationError(f"corrupt gallery {source!r}", detail=str(exc)) from exc
    validate_gallery_table(table, check_norms=False)
    return meta, table
