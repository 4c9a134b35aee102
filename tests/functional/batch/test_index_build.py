"""The ANN index build queued by a compaction, taken by the real embedding function (its
image has faiss): the gallery's index and manifest are written and the gallery is then
searched through them; a gallery below the threshold is left without one."""

from __future__ import annotations

import numpy as np
import pytest
from tests_support import unit_rows

from facegate.batch.gallery_work import IndexGallery, queue_index_build
from facegate.gallery.cache import GalleryCache
from facegate.gallery.format import GalleryMeta, build_gallery_table
from facegate.storage import keys as layout
from facegate.storage.clients import aws_client
from facegate.storage.galleries import GalleryStore
from facegate.storage.gallery_ann import gallery_loader, read_manifest

FUNCTION = "EmbedFunction"


@pytest.fixture(scope="module")
def ingest(make_queue):
    return make_queue("facegate-index-ingest")


@pytest.fixture(scope="module")
def embed(load_handler, ingest):
    return load_handler("embed", ingest_queue_url=ingest.url)


def _publish(aws, gallery: str, rows: int) -> GalleryStore:
    store = GalleryStore(aws_client("s3", aws), aws.bucket)
    ids = [f"s{i}" for i in range(rows)]
    table = build_gallery_table(
        subject_ids=ids,
        image_keys=[f"uploads/{gallery}/{s}/1.jpg" for s in ids],
        face_indices=np.zeros(rows, np.int32),
        bboxes=np.zeros((rows, 4), np.float32),
        det_scores=np.ones(rows, np.float32),
        embeddings=unit_rows(np.random.default_rng(rows), rows, 128),
        meta=GalleryMeta(model_id="sface", weights_sha256="ab" * 32, dim=128, threshold=0.4),
    )
    store.write_table(store.gallery_key(gallery), table)
    return store


def test_an_index_build_message_indexes_the_gallery(aws, embed, ingest, invoke):
    store = _publish(aws, "wide", 3000)
    _publish(aws, "narrow", 500)
    sqs = aws_client("sqs", aws)
    queue_index_build(sqs, ingest.url, "wide", 1000)
    queue_index_build(sqs, ingest.url, "narrow", 1000)
    assert invoke(embed, {"Records": ingest.drain()}, FUNCTION) == []

    manifest = read_manifest(store.objects, "wide")
    assert manifest is not None and manifest.gallery_rows == 3000
    assert store.objects.exists(manifest.index_key)
    served = GalleryCache().get(
        store.bucket, store.gallery_key("wide"), gallery_loader(store.objects, "wide")
    )
    assert served.ann is not None and served.ann.n_rows == 3000
    assert read_manifest(store.objects, "narrow") is None  # below min_rows: exact search
    assert store.objects.list_keys(layout.ann_prefix("narrow")) == []


def test_an_index_build_of_a_gallery_never_compacted_is_dropped(aws, embed, ingest, invoke):
    message = IndexGallery("never-built", 10).to_message()
    assert invoke(embed, {"Records": [ingest.record(message, "m-1")]}, FUNCTION) == []
