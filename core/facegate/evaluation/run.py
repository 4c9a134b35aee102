"""Running an evaluation: embed every image of a pair list once, score pairs, report.

Images where MTCNN finds no usable face are not dropped: LFW-style sets are centred crops, so
such an image is aligned with the median landmarks (relative to image size) of the images in
the same run where a face was found, and embedded like the rest. The count is reported as
``no_face``. Images that cannot be decoded at all score -1 (a non-match) and are counted as
``failed``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from facegate.errors import FaceError, FaceGateError
from facegate.evaluation.pairs import Pair
from facegate.evaluation.records import EmbeddedImages, Evaluation, score_pairs
from facegate.evaluation.report import kfold_report
from facegate.pipeline.face_pipeline import FacePipeline
from facegate.types import Detection, FaceResult


def embed_images(
    pipeline: FacePipeline, paths: Sequence[Path], *, chunk: int = 64, progress: bool = True
) -> EmbeddedImages:
    """Embed each distinct path once (the face nearest the centre: LFW-style crops put the
    subject there), with the median-landmark fallback."""
    out = EmbeddedImages()
    relative_landmarks: list[np.ndarray] = []
    pending: list[Path] = []
    bar = tqdm(total=len(paths), desc="embedding", unit="img", disable=not progress)
    for start in range(0, len(paths), chunk):
        batch = list(paths[start : start + chunk])
        for path, result in zip(batch, pipeline.process_many(batch, policy="center"), strict=True):
            if isinstance(result, FaceResult):
                out.vectors[path] = result.primary.vector
                width, height = result.image_size
                relative_landmarks.append(result.primary.detection.landmarks / (width, height))
            elif isinstance(result, FaceError):
                pending.append(path)
            else:
                out.failed[path] = result.code
        bar.update(len(batch))
    bar.close()
    if pending:
        median = (
            np.median(np.stack(relative_landmarks), axis=0)
            if relative_landmarks
            else _template_fallback(pipeline)
        )
        _embed_fallback(pipeline, pending, median, out)
    return out


def _template_fallback(pipeline: FacePipeline) -> np.ndarray:
    template, size = pipeline.embedder.inputs[0]
    return template / size


def _embed_fallback(
    pipeline: FacePipeline, paths: list[Path], relative: np.ndarray, out: EmbeddedImages
) -> None:
    faces, kept = [], []
    for path in paths:
        try:
            image = pipeline.decode(path)
        except FaceGateError as exc:
            out.failed[path] = exc.code
            continue
        height, width = image.shape[:2]
        landmarks = (relative * (width, height)).astype(np.float32)
        guess = Detection(
            box=(0.0, 0.0, float(width), float(height)), score=0.0, landmarks=landmarks
        )
        faces.append(pipeline.align(image, guess, 0))
        kept.append(path)
    if faces:
        for path, vector in zip(kept, pipeline.embedder.embed_faces(faces), strict=True):
            out.vectors[path] = vector
            out.no_face.append(path)


def run_evaluation(
    pipeline: FacePipeline, pairs: Sequence[Pair], *, progress: bool = True
) -> Evaluation:
    """Embed every distinct image of ``pairs`` once and score every pair."""
    started = time.perf_counter()
    paths = sorted({p.path_a for p in pairs} | {p.path_b for p in pairs})
    embedded = embed_images(pipeline, paths, progress=progress)
    return Evaluation(
        model_id=pipeline.model_id,
        pairs=list(pairs),
        scores=score_pairs(pairs, embedded),
        embedded=embedded,
        seconds=round(time.perf_counter() - started, 2),
        flip_tta=pipeline.embedder.flip_tta,
        card_threshold=pipeline.threshold,
    )


def evaluate_pairs(
    pipeline: FacePipeline, pairs: Sequence[Pair], *, progress: bool = True
) -> dict[str, Any]:
    """The LFW protocol on ``pairs``: the k-fold report (see ``facegate.evaluation.report``)."""
    return kfold_report(run_evaluation(pipeline, pairs, progress=progress))
