"""End-to-end photos/second: FaceGate's pipeline against two baselines in the same run.

- ``FacePipeline.process_many`` on JPEG bytes: decode -> detect -> align -> embed.
- facenet-pytorch as its README shows it: ``Image.open``, ``MTCNN(image_size=160,
  margin=0)(img)``, ``InceptionResnetV1().eval()(crop.unsqueeze(0))`` (untrained weights:
  same cost), batched as a list of same-size images for the batch rows.
- The same pipeline on ``FACEGATE_RUNTIME=torch FACEGATE_DETECTOR=mtcnn`` (the torch modules
  the graphs came from: what served before the graph runtimes): what serving on them gains;
  and the served runtime with ``FACEGATE_DETECTOR=mtcnn`` against the same torch row.
- The bare embedding networks of the served model (SFace and dlib's ResNet for the fused
  default) on the served runtime, on ready aligned chips: the compute floor under the whole
  pipeline.

Each (size, batch) row runs the four in turn, after one warm-up call each. 12 MP photos are
expensive, so their rows use fewer photos (stated in the notes); rates are per photo.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from photos import photos

from facegate.pipeline.face_pipeline import FacePipeline
from facegate.types import AlignedFace

#: (size name, photos for FaceGate, photos for facenet-pytorch)
PLAN: tuple[tuple[str, int, int], ...] = (
    ("250x250", 64, 32),
    ("640x480", 32, 16),
    ("12 MP", 8, 2),
)
BATCHES = (1, 32)


@dataclass(frozen=True)
class Rate:
    photos: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.photos / self.seconds


def _timed(run: Callable[[list[bytes]], object], data: list[bytes], batch: int) -> Rate:
    run(data[: min(batch, len(data))])  # warm-up: allocator, first-call paths
    started = time.perf_counter()
    for start in range(0, len(data), batch):
        run(data[start : start + batch])
    return Rate(len(data), time.perf_counter() - started)


class FacenetReadme:
    """The facenet-pytorch README pipeline, batched the way its README batches."""

    def __init__(self, device: str) -> None:
        from facenet_pytorch import MTCNN, InceptionResnetV1

        self.device = torch.device(device)
        self.mtcnn = MTCNN(image_size=160, margin=0, device=self.device)
        self.resnet = InceptionResnetV1(pretrained=None).eval().to(self.device)

    def __call__(self, batch: list[bytes]) -> object:
        from PIL import Image

        images = [Image.open(io.BytesIO(data)).convert("RGB") for data in batch]
        crops = self.mtcnn(images if len(images) > 1 else images[0])
        crops = crops if isinstance(crops, list) else [crops]
        stacked = torch.stack([c for c in crops if c is not None]).to(self.device)
        with torch.no_grad():
            return self.resnet(stacked)


def aligned_faces(pipeline: FacePipeline) -> list[AlignedFace]:
    """Real aligned faces (every network's chip) for the floor, made outside any clock."""
    faces = []
    for data in photos("250x250", 6):
        image = pipeline.decode(data)
        faces.append(pipeline.align(image, pipeline.detector.detect(image)[0], 0))
    return faces


def bare_forward(pipeline: FacePipeline, faces: list[AlignedFace], batch: int, count: int) -> Rate:
    """The model's networks alone (both, for a fused model), each on its own chips, in
    batches, on the pipeline's own runtime: no detection, alignment or normalisation."""
    parts = getattr(pipeline.embedder, "parts", [pipeline.embedder])
    inputs = []
    for i, part in enumerate(parts):
        chips = np.stack([faces[n % len(faces)].all_chips[i] for n in range(count)])
        inputs.append((part.network, chips))
    for network, x in inputs:
        network(x[:batch])
    started = time.perf_counter()
    for start in range(0, count, batch):
        for network, x in inputs:
            network(x[start : start + batch])
    return Rate(count, time.perf_counter() - started)


def _row(measure: str, ours: Rate, base: Rate, base_name: str, notes: str) -> dict[str, object]:
    return {
        "section": "throughput",
        "measure": measure,
        "unit": "photos/s",
        "value": ours.per_second,
        "baseline": base.per_second,
        "baseline_name": base_name,
        "ratio": ours.per_second / base.per_second,
        "higher_is_better": True,
        "notes": notes,
    }


def rows(device: str = "cpu") -> list[dict[str, object]]:
    """Three rows per (size, batch) for the served runtime: against the torch runtime,
    against facenet-pytorch, and against the served runtime's own floor."""
    from facegate.settings import Settings

    torch.set_num_threads(2)
    pipeline = FacePipeline(Settings(device=device, num_threads=2))
    pipeline.warm_up()
    reference = FacePipeline(
        Settings(device=device, num_threads=2, runtime="torch", detector="mtcnn")
    )
    reference.warm_up()
    mtcnn = FacePipeline(Settings(device=device, num_threads=2, detector="mtcnn"))
    mtcnn.warm_up()
    facenet = FacenetReadme(device)
    faces = aligned_faces(pipeline)
    runtime = pipeline.settings.runtime
    served = f"{runtime}, {pipeline.detector_name}"
    floor_name = f"bare {pipeline.model_id} networks on {runtime} (floor)"
    torch_name = "FACEGATE_RUNTIME=torch FACEGATE_DETECTOR=mtcnn"
    out: list[dict[str, object]] = []
    for size, ours_n, theirs_n in PLAN:
        data = photos(size, ours_n)
        for batch in BATCHES:
            ours = _timed(pipeline.process_many, data, batch)
            on_torch = _timed(reference.process_many, data, batch)
            theirs = _timed(facenet, data[:theirs_n], batch)
            floor = bare_forward(pipeline, faces, batch, max(64, batch * 2))
            shown = min(batch, ours_n)
            label = f"{size}, batch {shown}, {served}" + (f", {device}" if device != "cpu" else "")
            notes = f"{ours_n} photos (facenet-pytorch: {theirs_n}, batch {min(batch, theirs_n)})"
            out.append(_row(label, ours, on_torch, torch_name, f"{ours_n} photos"))
            with_mtcnn = _timed(mtcnn.process_many, data, batch)
            out.append(
                _row(
                    label.replace(served, f"{runtime}, mtcnn"),
                    with_mtcnn,
                    on_torch,
                    torch_name,
                    f"{ours_n} photos; FACEGATE_DETECTOR=mtcnn on {runtime}",
                )
            )
            out.append(_row(label, ours, theirs, "facenet-pytorch README pipeline", notes))
            out.append(_row(label, ours, floor, floor_name, f"batch {batch} chips"))
    return out
