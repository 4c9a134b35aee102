"""One typed settings object, read from the environment.

The names are the ones ``template.yaml`` sets on the Lambda functions (``FACEGATE_*``), so a
function behaves the same on AWS, on the local stack and in tests. Tests build their own
``Settings(...)`` instead of mutating the environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MultiFacePolicy = Literal["largest", "center", "all", "reject"]
AuthMode = Literal["api_key", "iam", "none"]
Runtime = Literal["onnxruntime", "openvino", "torch"]
Detector = Literal["mtcnn", "yunet"]
#: Every detector, the default first: each has its own committed calibrations
#: (``facegate/models/calibration/<detector>/``), because the crops it aligns move a model's
#: scores enough to move its threshold.
DETECTORS: tuple[Detector, ...] = ("yunet", "mtcnn")
DEFAULT_DETECTOR: Detector = DETECTORS[0]

#: Where set-up writes converted weights when running from a checkout (``<repo>/models``).
_CHECKOUT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models"
#: Where the Lambda images bake them in.
_IMAGE_MODEL_DIR = Path("/opt/facegate/models")

#: The template's dead-letter queues keep a message this long (``MessageRetentionPeriod``,
#: 1,209,600 s; tests/unit/test_template.py checks no queue keeps one longer). SQS counts it
#: from the message's first enqueue, so no notification is delivered later than this after
#: its upload.
DEAD_LETTER_RETENTION_DAYS = 14
#: Slack on top of the S3 retention a tombstone must outlive: S3 rounds a lifecycle age up to
#: the next midnight UTC and removes expired objects asynchronously, some time after.
TOMBSTONE_MARGIN_DAYS = 7


def default_model_dir() -> Path:
    """``<repo>/models`` when running from a checkout (development, CI), else the image path."""
    in_checkout = (_CHECKOUT_MODEL_DIR.parent / "pyproject.toml").is_file()
    return _CHECKOUT_MODEL_DIR if in_checkout else _IMAGE_MODEL_DIR


class Settings(BaseSettings):
    """Runtime configuration. Every field maps to ``FACEGATE_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="FACEGATE_", extra="ignore", frozen=True, protected_namespaces=()
    )

    model_dir: Path = Field(default_factory=default_model_dir)
    #: The fused SFace + dlib ResNet model: on LFW-dev it matches SFace alone on accuracy and
    #: beats it on ROC AUC, EER and TAR at FAR 1e-2 (README, Accuracy). "sface" stays selectable.
    model_id: str = "sface+dlib"
    #: What runs the networks (:mod:`facegate.pipeline.runtime`): OpenVINO or ONNX Runtime on
    #: the graphs set-up exported (no torch in the process), or torch on the safetensors
    #: weights. OpenVINO by default: the fastest of the three on CPU (README, Performance).
    runtime: Runtime = "openvino"
    device: str = "cpu"
    num_threads: int | None = Field(default=None, ge=1)

    max_image_bytes: int = Field(default=15 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    min_image_side: int = Field(default=80, ge=1)

    #: JPEGs at least twice this on their longer side are decoded at a reduced scale that
    #: keeps at least this many pixels (DCT scaling; boxes are still reported in the photo's
    #: own pixels). 0 decodes everything in full.
    decode_keep_side: int = Field(default=2000, ge=0)
    #: Which face detector runs (:mod:`facegate.pipeline.runtime`): YuNet (one small network
    #: from OpenCV Zoo, :mod:`facegate.pipeline.yunet`), the default because it detects a
    #: photo several times faster than MTCNN at the same LFW-dev accuracy, or MTCNN's three
    #: networks. Each model has a threshold calibrated with each detector (the card's
    #: ``calibrations``). YuNet's scores (``sqrt(cls * obj)``) run lower than MTCNN's
    #: probabilities, so each detector has its own default threshold (``det_threshold``).
    detector: Detector = DEFAULT_DETECTOR
    #: YuNet's working size: photos whose longer side exceeds it are downscaled for it (its
    #: cost grows with pixels; OpenCV Zoo runs it at 640x640 at most). MTCNN's is
    #: ``detect_max_side``.
    yunet_max_side: int = Field(default=640, ge=64)
    detect_max_side: int = Field(default=1024, ge=64)
    min_face_size: int = Field(default=20, ge=8)
    min_face_px: int = Field(default=32, ge=1)
    #: Minimum detection score for a face; None: the detector's own default
    #: (:data:`facegate.pipeline.detect.DEFAULT_THRESHOLDS`: MTCNN 0.9; YuNet 0.8, where it
    #: finds every LFW-dev face MTCNN finds, while at 0.9 it misses 18 of 1,583).
    det_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    multi_face: MultiFacePolicy = "largest"
    #: Galleries are built unattended: a photo with several faces is a reject, not a guess.
    gallery_multi_face: MultiFacePolicy = "reject"

    #: Chips per network call; None: the runtime's own
    #: (:func:`facegate.pipeline.runtime.embedding_batch_size`: 8 on the graph runtimes, whose
    #: buffers grow with the batch while the time per face does not fall past 8; 32 on torch).
    embed_batch_size: int | None = Field(default=None, ge=1)

    #: Seconds a liveness challenge may be answered in (``POST /liveness/challenges``).
    liveness_ttl_seconds: int = Field(default=30, ge=5, le=600)
    #: Whether challenges also ask for a nod (``up`` or ``down``) after the two turns.
    liveness_vertical: bool = False

    bucket: str = "facegate-local"
    table: str = "facegate-subjects"
    #: API keys (hashes, scopes, expiry): a table of their own, which the functions that
    #: check keys may only read (:mod:`facegate.storage.apikeys`).
    keys_table: str = "facegate-keys"
    #: The Secrets Manager secret (name or ARN; the template's ``ErasureKey``) whose value keys
    #: the tombstones' HMAC (:class:`facegate.storage.tombstones.ErasureKey`).
    erasure_key_secret: str = "facegate-erasure-key"
    aws_region: str = "us-east-1"
    aws_endpoint_url: str | None = None
    auth_mode: AuthMode = "api_key"
    ingest_queue_url: str | None = None
    jobs_queue_url: str | None = None
    aggregate_queue_url: str | None = None
    #: The compaction queue: a scheduled run queues one message per gallery there (fan-out);
    #: unset, it compacts every gallery itself, one after another.
    compact_queue_url: str | None = None
    #: A compaction leaving at least this many rows queues the gallery's ANN index build.
    ann_min_rows: int = Field(default=1_000_000, ge=1)
    #: A gallery erasure that would list more object versions than this runs as a job
    #: (``202``, ``GET /erasures/{id}``) instead of in the request; 0: always a job.
    erasure_inline_max_objects: int = Field(default=5000, ge=0)
    #: Tasks (tables, photo sets) per message when such a job fans out over the workers.
    erasure_chunk_size: int = Field(default=100, ge=1, le=200)
    #: A collection of more subjects than this is deleted by the jobs workers (``202``,
    #: ``GET /erasures/{id}``), this many per message; 0: always by the workers.
    collection_delete_inline_max: int = Field(default=25, ge=0)
    collection_delete_batch: int = Field(default=200, ge=1, le=10_000)
    #: The dead-letter queues an erasure scans for messages naming the person.
    ingest_dlq_url: str | None = None
    jobs_dlq_url: str | None = None
    job_chunk_size: int = Field(default=100, ge=1)
    job_top_k: int = Field(default=5, ge=1, le=100)
    archive_chunk_size: int = Field(default=200, ge=1)
    s3_max_image_bytes: int = Field(default=15 * 1024 * 1024, ge=1)
    flip_tta: bool = False
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
    #: Decide at the card's threshold calibrated for this false accept rate (e.g. 0.001).
    far: float | None = Field(default=None, gt=0.0, lt=1.0)
    #: The lowest threshold a request may ask for (its ``threshold`` or ``far``); unset: the
    #: card's threshold calibrated for FAR 1e-2 (:func:`facegate.service.probes.decision_floor`).
    min_threshold: float | None = Field(default=None, ge=-1.0, le=1.0)

    #: Retention, in days (template parameters ``UploadsRetentionDays``, ``JobsRetentionDays``,
    #: ``NoncurrentVersionDays``): the bucket's lifecycle rules apply them to S3; the stores
    #: turn them into the TTL (``expires_at``) of the DynamoDB items that must expire with
    #: what they describe. 0 keeps uploads / jobs until someone deletes them.
    uploads_retention_days: int = Field(default=30, ge=0)
    jobs_retention_days: int = Field(default=30, ge=0)
    noncurrent_version_days: int = Field(default=1, ge=1)
    #: An enrolment photo that no face item references is destroyed by the hourly compaction
    #: once nothing has written it for this long (:mod:`facegate.storage.orphans`); at least
    #: Lambda's 15-minute invocation limit plus 5 for clock skew, so that no enrolment still
    #: running can lose its photo.
    orphan_photo_min_age_minutes: int = Field(default=60, ge=20)
    #: An ingest ledger entry only has to outlive every delivery of its source's notification
    #: (at most :data:`DEAD_LETTER_RETENTION_DAYS` after the upload, redrives included).
    ledger_retention_days: int = Field(default=30, gt=DEAD_LETTER_RETENTION_DAYS)

    @field_validator(
        "aws_endpoint_url",
        "ingest_queue_url",
        "jobs_queue_url",
        "aggregate_queue_url",
        "compact_queue_url",
        "ingest_dlq_url",
        "jobs_dlq_url",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        """``""`` (as a template default) means "the real AWS endpoint", like unset."""
        return None if value == "" else value

    @model_validator(mode="after")
    def _one_decision_rule(self) -> Settings:
        """A raw threshold and a target FAR would contradict each other: refuse both; so would
        a deployment threshold below the floor the same deployment sets."""
        if self.threshold is not None and self.far is not None:
            raise ValueError("set FACEGATE_THRESHOLD or FACEGATE_FAR, not both")
        if (
            self.threshold is not None
            and self.min_threshold is not None
            and self.threshold < self.min_threshold
        ):
            raise ValueError("FACEGATE_THRESHOLD is below FACEGATE_MIN_THRESHOLD")
        return self

    @property
    def tombstone_lifetime_days(self) -> int | None:
        """The shortest a tombstone may live after the subject's latest DELETE; None: for ever.

        A tombstone is what stops a photo uploaded before the DELETE from bringing the
        subject back through a part built later (a late worker, a redriven message, a
        re-embedding), so it must outlive every such source: an upload or a job's probe for
        its retention plus the days its old version lingers, a dead-lettered notification for
        the queue's retention, and :data:`TOMBSTONE_MARGIN_DAYS` for S3's lateness. Derived,
        never set, so that it cannot be set shorter than the sources; for ever when uploads
        or jobs are kept.
        """
        if not self.uploads_retention_days or not self.jobs_retention_days:
            return None
        longest = max(
            self.uploads_retention_days + self.noncurrent_version_days,
            self.jobs_retention_days + self.noncurrent_version_days,
            DEAD_LETTER_RETENTION_DAYS,
        )
        return longest + TOMBSTONE_MARGIN_DAYS

    @property
    def tombstone_retention(self) -> int | None:
        """Days a tombstone is kept (its TTL): :attr:`tombstone_lifetime_days`.

        An erasure rewrites every part, rejects table and upload that held the person, so
        what a tombstone still guards against is only a source that predates the erasure and
        lands later (a worker in flight, a redriven message, an old object version before
        S3's lifecycle removes it): once the longest of those has aged out, the tombstone
        may go too.
        """
        return self.tombstone_lifetime_days


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once per process (Lambda handlers call this at module scope)."""
    return Settings()
