"""The Parquet gallery format: round trip, metadata, and every refusal the format promises."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests_support import unit_rows

from facegate.errors import ModelMismatchError, NoFaceError, StorageError, ValidationError
from facegate.gallery.format import (
    DEFAULT_ROW_GROUP_SIZE,
    METADATA_KEY,
    SCHEMA_VERSION,
    GalleryMeta,
    build_gallery_table,
    build_rejects_table,
    gallery_embeddings,
    gallery_schema,
    read_gallery,
    read_gallery_meta,
    rejects_from_errors,
    rejects_schema,
    validate_embeddings,
    write_gallery,
)

DIM = 16
SHA = "ab" * 32


def make_meta(**overrides: object) -> GalleryMeta:
    fields = {"model_id": "sface", "weights_sha256": SHA, "dim": DIM, "threshold": 0.36}
    fields.update(overrides)
    return GalleryMeta(**fields)  # type: ignore[arg-type]


def make_columns(n: int = 10, seed: int = 0, dim: int = DIM) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    return {
        "subject_ids": [f"s{i % 4}" for i in range(n)],
        "image_keys": [f"img/{i}.jpg" for i in range(n)],
        "face_indices": np.arange(n) % 2,
        "bboxes": rng.uniform(0, 100, (n, 4)).astype(np.float32),
        "det_scores": rng.uniform(0.9, 1.0, n).astype(np.float32),
        "embeddings": unit_rows(rng, n, dim),
    }


def make_table(n: int = 10, seed: int = 0, **meta_overrides: object) -> pa.Table:
    return build_gallery_table(**make_columns(n, seed), meta=make_meta(**meta_overrides))


# ---------------------------------------------------------------------------- schema


def test_schema_types_and_nullability() -> None:
    schema = gallery_schema(DIM)
    assert schema.names == [
        "subject_id",
        "image_key",
        "face_index",
        "bbox",
        "det_score",
        "embedding",
        "source_at",
    ]
    assert schema.field("source_at").type == pa.timestamp("us", tz="UTC")
    assert not schema.field("source_at").nullable
    emb = schema.field("embedding")
    assert pa.types.is_fixed_size_list(emb.type)
    assert emb.type.list_size == DIM
    assert emb.type.value_type == pa.float32()
    assert not emb.nullable
    assert not emb.type.value_field.nullable
    assert schema.field("bbox").type.list_size == 4
    assert schema.field("face_index").type == pa.int32()
    assert schema.field("det_score").type == pa.float32()
    assert not schema.field("subject_id").nullable
    assert not schema.field("image_key").nullable


def test_schema_refuses_bad_dim() -> None:
    with pytest.raises(ValidationError):
        gallery_schema(0)


# ---------------------------------------------------------------------------- metadata


def test_meta_json_round_trip() -> None:
    meta = make_meta(row_count=3)
    doc = json.loads(meta.to_json())
    assert doc["schema_version"] == SCHEMA_VERSION == 2
    assert doc["subject_scope"] is None
    assert doc["metric"] == "cosine"
    assert doc["created_at"].endswith("Z")
    assert GalleryMeta.from_json(meta.to_json()) == meta


@pytest.mark.parametrize(
    "overrides",
    [
        {"model_id": ""},
        {"weights_sha256": "not-a-hash"},
        {"dim": 0},
        {"dim": True},
        {"threshold": float("nan")},
        {"threshold": 1.5},
        {"metric": "euclidean"},
        {"created_at": "2024-01-01T00:00:00+02:00"},
        {"created_at": "yesterday"},
        {"row_count": -1},
        {"schema_version": 1},
        {"subject_scope": "gallery:"},
        {"subject_scope": "gallery:a/b"},
        {"subject_scope": "subjects"},
        {"detector": ""},
        {"detector": "yu net"},
        {"detector": 3},
    ],
)
def test_meta_refuses_invalid_fields(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        make_meta(**overrides)


def test_meta_from_json_refuses_missing_keys_and_other_versions() -> None:
    doc = json.loads(make_meta().to_json())
    del doc["weights_sha256"]
    with pytest.raises(ValidationError, match="weights_sha256"):
        GalleryMeta.from_json(json.dumps(doc))
    with pytest.raises(ValidationError, match="schema_version"):
        GalleryMeta.from_json(
            json.dumps({**json.loads(make_meta().to_json()), "schema_version": 1})
        )
    with pytest.raises(ValidationError):
        GalleryMeta.from_json(b"{not json")


def test_meta_records_the_detector_and_reads_files_written_before_it() -> None:
    meta = make_meta(detector="yunet")
    assert GalleryMeta.from_json(meta.to_json()).detector == "yunet"
    doc = json.loads(meta.to_json())
    del doc["detector"]  # a gallery of the same schema version written before the field
    assert GalleryMeta.from_json(json.dumps(doc)) == replace(meta, detector=None)


# ---------------------------------------------------------------------------- building


def test_build_sets_row_count_and_metadata() -> None:
    table = make_table(n=7)
    assert table.num_rows == 7
    meta = GalleryMeta.from_json(table.schema.metadata[METADATA_KEY])
    assert meta.row_count == 7
    assert meta.model_id == "sface"
    assert table.schema.remove_metadata().equals(gallery_schema(DIM))
    for column in table.columns:
        assert column.null_count == 0


def test_build_refuses_unnormalised_embeddings() -> None:
    cols = make_columns()
    cols["embeddings"] = cols["embeddings"] * 1.01  # type: ignore[operator]
    with pytest.raises(ValidationError, match="normalised"):
        build_gallery_table(**cols, meta=make_meta())


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_build_refuses_non_finite_embeddings(bad: float) -> None:
    cols = make_columns()
    emb = cols["embeddings"].copy()  # type: ignore[attr-defined]
    emb[3, 5] = bad
    cols["embeddings"] = emb
    with pytest.raises(ValidationError, match="non-finite"):
        build_gallery_table(**cols, meta=make_meta())


def test_build_accepts_rounding_within_tolerance() -> None:
    cols = make_columns()
    cols["embeddings"] = cols["embeddings"] * (1 + 5e-4)  # type: ignore[operator]
    assert build_gallery_table(**cols, meta=make_meta()).num_rows == 10


def test_build_refuses_dim_other_than_meta() -> None:
    with pytest.raises(ModelMismatchError):
        build_gallery_table(**make_columns(dim=DIM + 1), meta=make_meta())


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("subject_ids", ["a"] * 9),
        ("subject_ids", ["a"] * 9 + [None]),
        ("subject_ids", [""] * 10),
        ("image_keys", ["k"] * 9 + [None]),
        ("face_indices", np.arange(9)),
        ("face_indices", np.full(10, -1)),
        ("face_indices", np.full(10, 0.5)),
        ("bboxes", np.zeros((10, 5), np.float32)),
        ("bboxes", np.full((10, 4), np.nan, np.float32)),
        ("det_scores", np.zeros(9, np.float32)),
        ("embeddings", np.zeros(DIM, np.float32)),
    ],
)
def test_build_refuses_bad_columns(column: str, value: object) -> None:
    cols = make_columns()
    cols[column] = value
    with pytest.raises(ValidationError):
        build_gallery_table(**cols, meta=make_meta())


def test_empty_gallery_is_valid(tmp_path) -> None:
    cols = make_columns(n=0)
    cols["embeddings"] = np.empty((0, DIM), np.float32)
    table = build_gallery_table(**cols, meta=make_meta())
    path = tmp_path / "empty.parquet"
    write_gallery(table, path)
    meta, back = read_gallery(path)
    assert meta.row_count == 0
    assert gallery_embeddings(back).shape == (0, DIM)


# ---------------------------------------------------------------------------- I/O


def test_round_trip(tmp_path) -> None:
    table = make_table(n=50)
    path = tmp_path / "g.parquet"
    written = write_gallery(table, path, row_group_size=16)
    meta, back = read_gallery(path, expected_model_id="sface")
    assert meta == written
    assert meta.row_count == 50 and meta.dim == DIM and meta.threshold == pytest.approx(0.36)
    assert back.schema.equals(table.schema, check_metadata=True)
    assert back.equals(table)
    np.testing.assert_array_equal(gallery_embeddings(back), gallery_embeddings(table))
    emb_type = back.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(emb_type) and emb_type.list_size == DIM
    assert back.column("embedding").null_count == 0
    assert pq.ParquetFile(path).metadata.num_row_groups == 4


def test_write_uses_zstd_and_default_row_group(tmp_path) -> None:
    path = tmp_path / "g.parquet"
    write_gallery(make_table(n=5), path)
    md = pq.ParquetFile(path).metadata
    assert md.num_row_groups == 1
    assert md.row_group(0).column(0).compression == "ZSTD"
    assert DEFAULT_ROW_GROUP_SIZE == 65536


def test_round_trip_through_file_object() -> None:
    table = make_table()
    buf = io.BytesIO()
    write_gallery(table, buf)
    buf.seek(0)
    _, back = read_gallery(buf)
    assert back.equals(table)


def test_read_refuses_other_model(tmp_path) -> None:
    path = tmp_path / "g.parquet"
    write_gallery(make_table(model_id="arcface"), path)
    with pytest.raises(ModelMismatchError, match="arcface"):
        read_gallery(path, expected_model_id="sface")
    with pytest.raises(ModelMismatchError):
        read_gallery_meta(path, expected_model_id="sface")
    assert read_gallery_meta(path).model_id == "arcface"


def test_read_refuses_missing_metadata(tmp_path) -> None:
    path = tmp_path / "plain.parquet"
    pq.write_table(make_table().replace_schema_metadata(None), path)
    with pytest.raises(ValidationError, match="no 'facegate'"):
        read_gallery(path)


def test_read_refuses_invalid_metadata(tmp_path) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(make_table().replace_schema_metadata({METADATA_KEY: b"{oops"}), path)
    with pytest.raises(ValidationError):
        read_gallery(path)


def test_read_refuses_other_schema_version(tmp_path) -> None:
    table = make_table()
    doc = json.loads(table.schema.metadata[METADATA_KEY])
    doc["schema_version"] = 99
    path = tmp_path / "future.parquet"
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(doc)}), path)
    with pytest.raises(ValidationError, match="schema_version"):
        read_gallery(path)


def test_read_refuses_row_count_mismatch(tmp_path) -> None:
    table = make_table(n=10)
    path = tmp_path / "short.parquet"
    pq.write_table(table.slice(0, 6), path)  # metadata still claims 10 rows
    with pytest.raises(ValidationError, match="rows"):
        read_gallery(path)


def test_read_refuses_variable_list_embeddings(tmp_path) -> None:
    table = make_table()
    meta_bytes = table.schema.metadata
    idx = table.schema.get_field_index("embedding")
    as_list = table.column("embedding").cast(pa.list_(pa.float32()))
    bad = table.set_column(idx, "embedding", as_list).replace_schema_metadata(meta_bytes)
    path = tmp_path / "list.parquet"
    pq.write_table(bad, path)
    with pytest.raises(ValidationError, match="columns"):
        read_gallery(path)


def test_read_missing_file_is_storage_error(tmp_path) -> None:
    with pytest.raises(StorageError):
        read_gallery(tmp_path / "nope.parquet")


def test_read_non_parquet_is_validation_error(tmp_path) -> None:
    path = tmp_path / "text.parquet"
    path.write_text("hello, not parquet")
    with pytest.raises(ValidationError):
        read_gallery(path)


def test_write_refuses_tables_that_break_the_format(tmp_path) -> None:
    table = make_table()
    with pytest.raises(ValidationError):
        write_gallery(table.replace_schema_metadata(None), tmp_path / "a.parquet")
    with pytest.raises(ValidationError):
        write_gallery(table.slice(0, 3), tmp_path / "b.parquet")  # row_count disagrees
    with pytest.raises(ValidationError):
        write_gallery(table, tmp_path / "c.parquet", row_group_size=0)
    # An embedding column with a null row, smuggled past build_gallery_table.
    emb = table.column("embedding").combine_chunks()
    mask = pa.array([i == 2 for i in range(len(emb))])
    nulled = pa.FixedSizeListArray.from_arrays(emb.values, type=emb.type, mask=mask)
    smuggled = table.set_column(5, table.schema.field("embedding").with_nullable(True), nulled)
    with pytest.raises(ValidationError):
        write_gallery(smuggled, tmp_path / "d.parquet")


def test_write_refuses_hand_built_unnormalised_table(tmp_path) -> None:
    table = make_table()
    emb = gallery_embeddings(table) * 2
    col = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), type=table.schema.field(5).type)
    with pytest.raises(ValidationError, match="normalised"):
        write_gallery(table.set_column(5, table.schema.field(5), col), tmp_path / "x.parquet")


# ---------------------------------------------------------------------------- embeddings view


def test_gallery_embeddings_is_zero_copy_for_one_chunk() -> None:
    cols = make_columns(n=8)
    table = build_gallery_table(**cols, meta=make_meta())
    emb = gallery_embeddings(table)
    assert emb.shape == (8, DIM) and emb.dtype == np.float32
    np.testing.assert_array_equal(emb, cols["embeddings"])
    values = table.column("embedding").chunk(0).values.to_numpy(zero_copy_only=True)
    assert np.shares_memory(emb, values)


def test_gallery_embeddings_respects_slices_and_chunks() -> None:
    cols = make_columns(n=12)
    table = build_gallery_table(**cols, meta=make_meta())
    np.testing.assert_array_equal(gallery_embeddings(table.slice(5, 4)), cols["embeddings"][5:9])
    chunked = pa.concat_tables([table.slice(0, 5), table.slice(5)])
    assert chunked.column("embedding").num_chunks == 2
    np.testing.assert_array_equal(gallery_embeddings(chunked), cols["embeddings"])


def test_validate_embeddings_refuses_zero_vector() -> None:
    with pytest.raises(ValidationError):
        validate_embeddings(np.zeros((2, DIM), np.float32))


# ---------------------------------------------------------------------------- rejects


def test_rejects_table() -> None:
    table = build_rejects_table(["a.jpg", "b.jpg"], ["no_face", "invalid_image"], [None, "bad"])
    assert table.schema.equals(rejects_schema())
    assert not rejects_schema().field("reason").nullable
    assert rejects_schema().field("detail").nullable
    assert table.column("detail").to_pylist() == [None, "bad"]
    assert build_rejects_table(["a"], ["no_face"]).column("detail").null_count == 1


def test_rejects_refuses_nulls_and_length_mismatch() -> None:
    with pytest.raises(ValidationError):
        build_rejects_table(["a", None], ["no_face", "no_face"])  # type: ignore[list-item]
    with pytest.raises(ValidationError):
        build_rejects_table(["a", "b"], ["no_face"])
    with pytest.raises(ValidationError):
        build_rejects_table(["a"], ["no_face"], ["x", "y"])


def test_rejects_from_errors_uses_stable_codes() -> None:
    table = rejects_from_errors([("a.jpg", NoFaceError("no face found"))])
    assert table.to_pylist() == [
        {
            "image_key": "a.jpg",
            "reason": "no_face",
            "detail": "no face found",
            "subject_id": None,
            "source_at": None,
        }
    ]


def test_rejects_carry_the_subject_and_upload_time_when_known() -> None:
    table = rejects_from_errors(
        [
            ("uploads/g/ann/1.jpg", NoFaceError("no face"), "ann", "2026-01-02T03:04:05.000006Z"),
            ("uploads/g/set.zip/stray.jpg", NoFaceError("no face")),
        ]
    )
    assert table.schema.equals(rejects_schema())
    assert table.column("subject_id").to_pylist() == ["ann", None]
    first, second = table.column("source_at").to_pylist()
    assert first is not None and first.isoformat() == "2026-01-02T03:04:05.000006+00:00"
    assert second is None


def test_gallery_rows_keep_their_upload_times() -> None:
    columns = make_columns(2)
    times = ["2026-01-01T00:00:00.000001Z", "2026-02-01T00:00:00Z"]
    table = build_gallery_table(**columns, meta=make_meta(), source_times=times)
    got = [t.isoformat() for t in table.column("source_at").to_pylist()]
    assert got == ["2026-01-01T00:00:00.000001+00:00", "2026-02-01T00:00:00+00:00"]
    default = build_gallery_table(**columns, meta=make_meta(created_at="2025-05-05T05:05:05Z"))
    assert {t.isoformat() for t in default.column("source_at").to_pylist()} == {
        "2025-05-05T05:05:05+00:00"
    }
    with pytest.raises(ValidationError, match="UTC"):
        build_gallery_table(**columns, meta=make_meta(), source_times=["2026-01-01T00:00:00"] * 2)
    with pytest.raises(ValidationError, match="rows"):
        build_gallery_table(**columns, meta=make_meta(), source_times=times[:1])


# ---------------------------------------------------------------------------- meta


def test_meta_is_frozen() -> None:
    meta = make_meta()
    with pytest.raises(AttributeError):
        meta.dim = 3  # type: ignore[misc]
    assert replace(meta, row_count=4).row_count == 4
