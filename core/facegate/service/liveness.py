"""Log in with a liveness check: issue a challenge, judge the frames that answer it, and
verify the live face against the claimed subject. Torch-free, HTTP-free.

The rules are :mod:`facegate.liveness.challenge`'s; this wires them to the pipeline (the
frames' faces, under the ``all`` policy so that a second face in a frame is seen), the
challenge store (single use, expiry) and the subject's enrolled faces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from facegate.errors import FaceGateError, LivenessFailedError, NoFaceError
from facegate.liveness.calibration import PoseCalibration
from facegate.liveness.challenge import check_frame_steps, judge, new_steps
from facegate.pipeline.verify import verify_embeddings
from facegate.service.faces import FaceService
from facegate.service.probes import verification_response
from facegate.storage.challenges import ChallengeStore
from facegate.types import FaceResult


class LivenessService:
    """``challenge()`` then ``verify(...)``, for the subjects of ``faces``' collection."""

    def __init__(
        self,
        faces: FaceService,
        challenges: ChallengeStore,
        calibration: PoseCalibration,
        *,
        vertical: bool = False,
    ) -> None:
        self.faces = faces
        self.challenges = challenges
        self.calibration = calibration
        self.vertical = vertical

    def challenge(self) -> dict[str, Any]:
        """A new challenge: its id, steps and expiry."""
        issued = self.challenges.issue(new_steps(vertical=self.vertical))
        return issued.to_dict(now=float(issued.expires_at - self.challenges.ttl_seconds))

    def verify(
        self,
        challenge_id: str,
        subject_id: str,
        frames: Sequence[tuple[str, bytes]],
        *,
        threshold: float | None = None,
        far: float | None = None,
    ) -> dict[str, Any]:
        """Judge ``frames`` (step label, photo) against the challenge, then the live face
        against the subject's enrolled faces.

        The challenge is used up first, whatever follows: a refused attempt cannot be
        retried with the same nonce. The subject is looked up before any frame is decoded
        (an unknown subject is a 404 whatever the frames). Liveness refusals are
        :class:`LivenessFailedError` (422, with a ``reason``); a live person who is not the
        subject is an answer, ``granted: false``, like a ``/compare`` that does not match.
        """
        challenge = self.challenges.use(challenge_id)
        decided = self.faces.decision_threshold(threshold, far)
        enrolled, stored = self.faces.enrolled(subject_id)
        labels = [label for label, _ in frames]
        check_frame_steps(challenge.steps, labels)
        outcomes = self.faces.pipeline.process_many([photo for _, photo in frames], policy="all")
        results: list[FaceResult] = []
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, NoFaceError):
                raise LivenessFailedError(f"frame {index} holds no face", reason="no_face")
            if isinstance(outcome, FaceGateError):
                raise outcome
            results.append(outcome)
        steps, vectors = judge(
            challenge.steps, labels, results, self.calibration, self.faces.pipeline.threshold
        )
        centre = [i for i, label in enumerate(labels) if label == "center"]
        scores = enrolled @ vectors[centre].T  # (enrolled faces, centre frames)
        best_face, best_frame = np.unravel_index(int(np.argmax(scores)), scores.shape)
        frame = centre[int(best_frame)]
        result = verification_response(
            verify_embeddings(
                vectors[frame],
                enrolled[int(best_face)],
                threshold=decided,
                model_id=self.faces.pipeline.model_id,
                faces=(results[frame].primary.detection, None),
            )
        )
        return result | {
            "live": True,
            "granted": bool(result["match"]),
            "subject_id": subject_id,
            "challenge_id": challenge.challenge_id,
            "steps": [s.to_dict() for s in steps],
            "frames": len(frames),
            "enrolled_faces": len(stored),
        }


__all__ = ["LivenessService"]
