"""The face pipeline as one service object: decode -> detect -> align -> embed -> verify.

``FacePipeline`` wires the steps and owns the loaded models (built once, on first use, from
``Settings``). Every public method takes photos as bytes, paths or RGB arrays; per-photo
failures in ``process_many`` come back as typed errors in place, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property, partial
from pathlib import Path
from typing import TypeVar

import numpy as np

from facegate.errors import FaceGateError
from facegate.models.card import ModelCard, resolve_threshold
from facegate.pipeline.align import align_face
from facegate.pipeline.detect import DEFAULT_THRESHOLDS, FaceDetector, select_faces
from facegate.pipeline.embed import Embedder, FusedEmbedder
from facegate.pipeline.image import (
    DecodedImage,
    ImageLimits,
    decode_image_reduced,
    read_image_bytes,
)
from facegate.pipeline.verify import VerificationResult, verify_embeddings
from facegate.settings import MultiFacePolicy, Settings, get_settings
from facegate.types import AlignedFace, Detection, FaceEmbedding, FaceResult, ImageSource

T = TypeVar("T")
#: The blank photo :meth:`FacePipeline.warm_up` detects in: an LFW-sized photo (the first
#: inference is the costly one whatever its shape).
WARM_SIDE = 250


class FacePipeline:
    """Decode, detect, align and embed with the models named by ``settings``."""

    #: ``process_many`` decodes and detects at most this many photos at a time (the
    #: detector's batch size: same-size photos of a group run in one call) ...
    group_photos = 16
    #: ... and starts a new group once one holds this many decoded pixels (300 MB of RGB; a
    #: group can pass it by one photo, at most ``Settings.max_image_pixels``).
    group_pixels = 100_000_000

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        detector: FaceDetector | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        if detector is not None:
            self.__dict__["detector"] = detector
        if embedder is not None:
            self.__dict__["embedder"] = embedder
        self.limits = ImageLimits(
            max_bytes=self.settings.max_image_bytes,
            max_pixels=self.settings.max_image_pixels,
            min_side=self.settings.min_image_side,
        )

    @cached_property
    def detector(self) -> FaceDetector:
        """The settings' detector (MTCNN or YuNet) on the settings' runtime
        (:mod:`facegate.pipeline.runtime`), at its own default threshold unless the
        settings name one."""
        from facegate.pipeline.runtime import detector_nets

        threshold = self.settings.det_threshold
        return FaceDetector(
            detector_nets(self.settings),
            min_face_size=self.settings.min_face_size,
            threshold=DEFAULT_THRESHOLDS[self.settings.detector]
            if threshold is None
            else threshold,
            max_side=self.settings.detect_max_side,
        )

    @cached_property
    def embedder(self) -> Embedder | FusedEmbedder:
        """The model named by the settings, on the settings' runtime, deciding at the
        threshold calibrated with the settings' detector; a fused card loads each of its
        parts."""
        from facegate.models.card import read_card
        from facegate.models.fused import fused_parts

        card = read_card(self.settings.model_dir, self.settings.model_id)
        if card.architecture == "fused":
            parts = fused_parts(self.settings.model_dir, card)
            embedders = _side_by_side([partial(self._embedder, part) for part in parts])
            return FusedEmbedder(embedders, card.for_detector(self.settings.detector))
        return self._embedder(card.model_id)

    def _embedder(self, model_id: str) -> Embedder:
        from facegate.pipeline.runtime import embedding_batch_size, embedding_network

        network, card = embedding_network(self.settings, model_id)
        return Embedder(
            network,
            card.for_detector(self.settings.detector),
            batch_size=embedding_batch_size(self.settings),
            flip_tta=self.settings.flip_tta,
        )

    @property
    def card(self) -> ModelCard:
        return self.embedder.card

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    @property
    def threshold(self) -> float:
        """The settings' raw threshold, else the card's for the settings' target FAR, else the
        card's calibrated default."""
        return resolve_threshold(self.card, self.settings.threshold, self.settings.far)

    @property
    def detector_name(self) -> str:
        """The detector whose crops the model embeds: galleries record it."""
        return self.settings.detector

    def warm_up(self) -> None:
        """Load both models now and run each network once on a blank input (Lambda handlers
        call this at module scope, in the init phase), side by side.

        A graph runtime compiles in native code that releases the GIL, so on two cores the
        detector's and each embedder's compilations overlap (cold start 0.1 s shorter). Its
        first inference also costs more than the next (buffers allocated, kernels fitted to
        the shapes: ~40 ms for the fused default's two networks on OpenVINO): run here, that
        overlaps the other compilations instead of waiting for the first request."""
        _side_by_side([self._warm_detector, self._warm_embedder])

    def _warm_detector(self) -> None:
        self.detector.detect(np.zeros((WARM_SIDE, WARM_SIDE, 3), dtype=np.uint8))

    def _warm_embedder(self) -> None:
        embedder = self.embedder
        parts = embedder.parts if isinstance(embedder, FusedEmbedder) else [embedder]
        _side_by_side([partial(_warm_embedder, part) for part in parts])

    def decode(self, source: ImageSource) -> np.ndarray:
        """Any accepted source -> ``(H, W, 3) uint8`` RGB at full resolution."""
        return self._decode(source, keep_side=0).pixels

    def _decode(self, source: ImageSource, keep_side: int) -> DecodedImage:
        if isinstance(source, np.ndarray):
            if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
                raise FaceGateError("arrays must be (H, W, 3) uint8 RGB")
            return DecodedImage(source, 1.0, (source.shape[1], source.shape[0]))
        if isinstance(source, str | Path):
            source = read_image_bytes(source, self.limits)
        return decode_image_reduced(source, self.limits, keep_side=keep_side)

    def align(
        self, image: np.ndarray, detection: Detection, face_index: int, scale: float = 1.0
    ) -> AlignedFace:
        """One chip per network of the model, each on that network's own template.

        ``detection`` is in the photo's own pixels; ``image`` is the photo at ``scale``.
        """
        landmarks = detection.landmarks * scale if scale != 1.0 else detection.landmarks
        chips = tuple(
            align_face(image, landmarks, template, size) for template, size in self.embedder.inputs
        )
        return AlignedFace(chip=chips[0], detection=detection, face_index=face_index, chips=chips)

    def process(self, source: ImageSource, policy: MultiFacePolicy | None = None) -> FaceResult:
        """One photo; raises the photo's ``FaceGateError`` if it cannot be used."""
        result = self.process_many([source], policy)[0]
        if isinstance(result, FaceGateError):
            raise result
        return result

    def process_many(
        self, sources: Sequence[ImageSource], policy: MultiFacePolicy | None = None
    ) -> list[FaceResult | FaceGateError]:
        """Many photos with batched detection and embedding; errors are returned in place.

        Photos are decoded and detected in groups of at most :attr:`group_photos` photos and
        about :attr:`group_pixels` decoded pixels: a group's decoded images are dropped once
        its faces are aligned, so a long list (a batch chunk, a request of large PNGs) never
        holds every decoded image at once. Only the aligned chips (a few KB a face) wait for
        the one batched embedding at the end.
        """
        policy = policy or self.settings.multi_face
        outcomes: list[FaceResult | FaceGateError | None] = [None] * len(sources)
        faces: list[tuple[int, AlignedFace]] = []
        found: dict[int, tuple[list[Detection], tuple[int, int]]] = {}
        group: dict[int, DecodedImage] = {}
        pixels = 0
        for i, source in enumerate(sources):
            if len(group) >= self.group_photos or pixels >= self.group_pixels:
                faces.extend(self._detect_group(group, policy, outcomes, found))
                group, pixels = {}, 0
            try:
                group[i] = self._decode(source, self.settings.decode_keep_side)
            except FaceGateError as exc:
                outcomes[i] = exc
                continue
            pixels += group[i].pixels.shape[0] * group[i].pixels.shape[1]
        faces.extend(self._detect_group(group, policy, outcomes, found))
        del group
        vectors = self.embedder.embed_faces([f for _, f in faces])
        kept: dict[int, list[FaceEmbedding]] = {}
        for (i, face), vector in zip(faces, vectors, strict=True):
            kept.setdefault(i, []).append(
                FaceEmbedding(vector, face.detection, face.face_index, self.model_id)
            )
        for i, embeddings in kept.items():
            detections, size = found[i]
            outcomes[i] = FaceResult(detections, embeddings, size)
        return [o if o is not None else FaceGateError("not processed") for o in outcomes]

    def _detect_group(
        self,
        group: dict[int, DecodedImage],
        policy: MultiFacePolicy,
        outcomes: list[FaceResult | FaceGateError | None],
        found: dict[int, tuple[list[Detection], tuple[int, int]]],
    ) -> list[tuple[int, AlignedFace]]:
        """Detect one group in a batch and align the faces ``policy`` keeps; each photo's
        detections and size go to ``found``, a photo with no usable face to ``outcomes``."""
        if not group:
            return []
        order = list(group)
        all_detections = self.detector.detect_batch([group[i].pixels for i in order])
        faces: list[tuple[int, AlignedFace]] = []
        for i, detected in zip(order, all_detections, strict=True):
            decoded = group[i]
            # Boxes and landmarks in the photo's own pixels, whatever scale it was decoded at.
            detections = [d.scaled(1.0 / decoded.scale) for d in detected]
            found[i] = (detections, decoded.original_size)
            try:
                chosen = select_faces(
                    detections, policy, self.settings.min_face_px, image_size=decoded.original_size
                )
            except FaceGateError as exc:
                outcomes[i] = exc
                continue
            faces.extend(
                (i, self.align(decoded.pixels, detections[k], k, decoded.scale)) for k in chosen
            )
        return faces

    def verify(self, a: ImageSource, b: ImageSource) -> VerificationResult:
        """1:1: the largest face of each photo, compared at the model's threshold."""
        first, second = self.process_many([a, b], policy="largest")
        for outcome in (first, second):
            if isinstance(outcome, FaceGateError):
                raise outcome
        assert isinstance(first, FaceResult) and isinstance(second, FaceResult)
        return verify_embeddings(
            first.primary.vector,
            second.primary.vector,
            threshold=self.threshold,
            model_id=self.model_id,
            faces=(first.primary.detection, second.primary.detection),
        )


def _warm_embedder(embedder: Embedder) -> None:
    """One blank chip through ``embedder``'s network."""
    size = embedder.inputs[0][1]
    embedder.embed(np.zeros((1, size, size, 3), dtype=np.uint8))


def _side_by_side(loads: Sequence[Callable[[], T]]) -> list[T]:
    """Each load's result, the loads run in threads of their own; the first error raised."""
    with ThreadPoolExecutor(max_workers=len(loads), thread_name_prefix="facegate-load") as pool:
        futures = [pool.submit(load) for load in loads]
        return [future.result() for future in futures]
