"""``FacePipeline.warm_up`` loads the models and runs every network once, on a blank photo
and blank chips of each network's own size, so that a runtime's costly first inference
happens in a Lambda's init phase and not in its first request. Recording stand-ins for the
networks; the real cards (their chip sizes and the fused default's parts)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from facegate.models.card import read_card
from facegate.pipeline.embed import Embedder, FusedEmbedder
from facegate.pipeline.face_pipeline import WARM_SIDE, FacePipeline
from facegate.settings import Settings
from facegate.types import Detection


class RecordingDetector:
    def __init__(self) -> None:
        self.images: list[np.ndarray] = []

    def detect(self, image: np.ndarray) -> list[Detection]:
        self.images.append(image)
        return []


class RecordingNetwork:
    """What a runtime's embedding network is called with. With a ``meet`` barrier, a call
    waits there for the other parts' calls: it breaks (``BrokenBarrierError``) unless they
    run at the same time."""

    def __init__(self, dim: int, meet: threading.Barrier | None = None) -> None:
        self.dim = dim
        self.meet = meet
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        self.calls.append(chips.shape)
        if self.meet is not None:
            self.meet.wait()
        assert chips.dtype == np.uint8 and not chips.any()
        return np.ones((len(chips), self.dim), dtype=np.float32)


def _parts(
    names: Sequence[str], meet: threading.Barrier | None = None
) -> tuple[list[RecordingNetwork], list[Embedder]]:
    model_dir = Settings().model_dir
    cards = [read_card(model_dir, name) for name in names]
    networks = [RecordingNetwork(card.embedding_dim, meet) for card in cards]
    return networks, [Embedder(n, c) for n, c in zip(networks, cards, strict=True)]


def test_warm_up_runs_each_part_of_the_fused_model_once_on_a_chip_of_its_size():
    networks, parts = _parts(["sface", "dlib-resnet"], threading.Barrier(2, timeout=10))
    fused = FusedEmbedder(parts, read_card(Settings().model_dir, "sface+dlib"))
    detector = RecordingDetector()
    FacePipeline(detector=detector, embedder=fused).warm_up()  # type: ignore[arg-type]
    assert [image.shape for image in detector.images] == [(WARM_SIDE, WARM_SIDE, 3)]
    for network, part in zip(networks, parts, strict=True):
        size = part.inputs[0][1]
        assert network.calls == [(1, size, size, 3)]
    assert networks[0].calls != networks[1].calls  # SFace 112 px, dlib 150 px
    # The parts' first inferences overlapped: each call waited for the other at the barrier.


def test_warm_up_of_a_single_model_runs_its_network_once():
    (network,), (part,) = _parts(["sface"])
    detector = RecordingDetector()
    FacePipeline(detector=detector, embedder=part).warm_up()  # type: ignore[arg-type]
    size = part.inputs[0][1]
    assert network.calls == [(1, size, size, 3)]
    assert len(detector.images) == 1
