"""Training data preparation: an identity-folder data set in, aligned 112x112 face chips out.

``SRC/<identity>/<photo>`` is the layout of CASIA-WebFace, VGGFace2 and LFW. Every photo goes
through the serving pipeline's own decoder, detector, face choice and ArcFace 5-point
alignment, so a model trained on the chips sees exactly what it will see when served. The run
is resumable (a photo whose chip, or reject, is already recorded is skipped), works in
same-size batches, optionally in several worker processes, and accounts for every photo: a
chip, or a row in ``rejects.csv`` with its reason. Identities are split train/val with a
seeded shuffle, so no person is in both (``split.json``).
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from facegate.errors import FaceGateError
from facegate.models.templates import ARCFACE_112
from facegate.pipeline.align import align_face
from facegate.pipeline.detect import select_faces
from facegate.pipeline.image import (
    DecodedImage,
    ImageLimits,
    decode_image_reduced,
    read_image_bytes,
)
from facegate.settings import MultiFacePolicy, Settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
CHIP_SIZE = 112
REJECTS = "rejects.csv"
SPLIT = "split.json"


@dataclass(frozen=True)
class PrepareReport:
    photos: int
    chips: int
    rejects: int
    skipped: int
    identities: int
    train_identities: int
    val_identities: int

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def identity_photos(src: Path) -> list[tuple[str, Path]]:
    """``(identity, photo)`` for every image file one level under an identity folder."""
    return [
        (person.name, photo)
        for person in sorted(p for p in src.iterdir() if p.is_dir())
        for photo in sorted(person.iterdir())
        if photo.suffix.lower() in IMAGE_SUFFIXES
    ]


def split_identities(
    identities: Sequence[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Identity-disjoint train/val lists: a seeded shuffle of the sorted names, so the split
    depends on the names and the seed only, not on the order the disk lists them in."""
    names = sorted(set(identities))
    random.Random(seed).shuffle(names)
    n_val = round(len(names) * val_fraction)
    return sorted(names[n_val:]), sorted(names[:n_val])


def chip_path(dst: Path, identity: str, photo: Path) -> Path:
    return dst / "chips" / identity / f"{photo.stem}.png"


def _read_rejects(dst: Path) -> dict[str, tuple[str, str]]:
    path = dst / REJECTS
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["photo"]: (row["reason"], row["detail"]) for row in csv.DictReader(handle)}


def _write_rejects(dst: Path, rejects: dict[str, tuple[str, str]]) -> None:
    tmp = dst / (REJECTS + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["photo", "reason", "detail"])
        for photo, (reason, detail) in sorted(rejects.items()):
            writer.writerow([photo, reason, detail])
    tmp.replace(dst / REJECTS)


class ChipMaker:
    """Decode, detect, choose and align photos into 112x112 ArcFace chips (no embedding)."""

    def __init__(self, settings: Settings, policy: MultiFacePolicy) -> None:
        from facegate.pipeline.face_pipeline import FacePipeline

        self.settings = settings
        self.policy = policy
        self.detector = FacePipeline(settings).detector
        self.limits = ImageLimits(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            min_side=settings.min_image_side,
        )

    def chips(self, photos: Sequence[Path]) -> list[np.ndarray | FaceGateError]:
        decoded: dict[int, DecodedImage] = {}
        out: list[np.ndarray | FaceGateError | None] = [None] * len(photos)
        for i, photo in enumerate(photos):
            try:
                data = read_image_bytes(photo, self.limits)
                decoded[i] = decode_image_reduced(
                    data, self.limits, keep_side=self.settings.decode_keep_side
                )
            except FaceGateError as exc:
                out[i] = exc
        order = list(decoded)
        found = self.detector.detect_batch([decoded[i].pixels for i in order])
        for i, detections in zip(order, found, strict=True):
            image = decoded[i]
            scaled = [d.scaled(1.0 / image.scale) for d in detections]
            try:
                k = select_faces(
                    scaled, self.policy, self.settings.min_face_px, image_size=image.original_size
                )[0]
            except FaceGateError as exc:
                out[i] = exc
                continue
            landmarks = detections[k].landmarks
            out[i] = align_face(image.pixels, landmarks, ARCFACE_112, CHIP_SIZE)
        return [o if o is not None else FaceGateError("not processed") for o in out]


_worker: ChipMaker | None = None


def _init_worker(settings_json: str, policy: MultiFacePolicy) -> None:
    global _worker
    import torch

    torch.set_num_threads(1)
    _worker = ChipMaker(Settings.model_validate_json(settings_json), policy)


def _work(batch: list[tuple[str, str]], dst: str) -> list[tuple[str, str, str] | None]:
    assert _worker is not None
    return _make(_worker, [(i, Path(p)) for i, p in batch], Path(dst))


def _make(
    maker: ChipMaker, batch: list[tuple[str, Path]], dst: Path
) -> list[tuple[str, str, str] | None]:
    """Chips written for ``batch``; ``(photo, reason, detail)`` for each photo rejected."""
    results = maker.chips([photo for _, photo in batch])
    out: list[tuple[str, str, str] | None] = []
    for (identity, photo), result in zip(batch, results, strict=True):
        if isinstance(result, FaceGateError):
            out.append((f"{identity}/{photo.name}", result.code, result.message))
            continue
        target = chip_path(dst, identity, photo)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp.png")
        Image.fromarray(result).save(tmp)
        tmp.replace(target)
        out.append(None)
    return out


def prepare(
    src: Path,
    dst: Path,
    *,
    settings: Settings | None = None,
    policy: MultiFacePolicy = "center",
    batch: int = 32,
    workers: int = 1,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> PrepareReport:
    """Chips for every photo of ``src`` not yet done in ``dst``, rejects, and the split."""
    settings = settings or Settings()
    dst.mkdir(parents=True, exist_ok=True)
    photos = identity_photos(src)
    rejects = _read_rejects(dst)
    todo = [
        (identity, photo)
        for identity, photo in photos
        if not chip_path(dst, identity, photo).is_file()
        and f"{identity}/{photo.name}" not in rejects
    ]
    batches = [todo[i : i + batch] for i in range(0, len(todo), batch)]
    bar = tqdm(total=len(todo), desc="preparing", unit="photo", disable=not progress)
    try:
        if workers > 1 and batches:
            import multiprocessing

            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                workers, context, _init_worker, (settings.model_dump_json(), policy)
            ) as pool:
                jobs = [
                    pool.submit(_work, [(i, str(p)) for i, p in chunk], str(dst))
                    for chunk in batches
                ]
                for chunk, job in zip(batches, jobs, strict=True):
                    _collect(job.result(), rejects)
                    bar.update(len(chunk))
        elif batches:
            maker = ChipMaker(settings, policy)
            for chunk in batches:
                _collect(_make(maker, chunk, dst), rejects)
                bar.update(len(chunk))
    finally:
        bar.close()
        _write_rejects(dst, rejects)
    identities = sorted({identity for identity, _ in photos})
    train, val = split_identities(identities, val_fraction, seed)
    split = {"seed": seed, "val_fraction": val_fraction, "train": train, "val": val}
    (dst / SPLIT).write_text(json.dumps(split, indent=1) + "\n")
    chips = sum(1 for identity, photo in photos if chip_path(dst, identity, photo).is_file())
    return PrepareReport(
        photos=len(photos),
        chips=chips,
        rejects=len(rejects),
        skipped=len(photos) - len(todo),
        identities=len(identities),
        train_identities=len(train),
        val_identities=len(val),
    )


def _collect(
    results: list[tuple[str, str, str] | None], rejects: dict[str, tuple[str, str]]
) -> None:
    for rejected in results:
        if rejected is not None:
            rejects[rejected[0]] = (rejected[1], rejected[2])
