"""Videos for Chromium's fake camera (``--use-file-for-fake-video-capture``), made of photos.

Chromium plays a Y4M file in a loop as the camera: header ``YUV4MPEG2 W.. H.. F..:1 Ip A1:1
C420jpeg``, then per frame ``FRAME\\n`` and its Y, U and V planes (4:2:0: U and V at half the
width and height). The photos are converted with numpy (BT.601, studio range, what Chromium
expects of I420), each placed whole on a 640x480 grey frame.

A log-in needs a head that turns. :func:`pose_loop` alternates a frontal photo, a photo of
the same person turned to *their* left, and its mirror image (the same face turned to their
right), with durations chosen against the page's capture schedule so that every step's
frames see what the step needs, whatever the video's phase when the step starts; see
:func:`pose_loop`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

WIDTH, HEIGHT = 640, 480
FPS = 25
BACKGROUND = (128, 128, 128)


def camera_frame(photo: Path, *, mirrored: bool = False) -> np.ndarray:
    """``photo`` scaled to fit a 640x480 frame, centred on grey: ``(480, 640, 3) uint8`` RGB.
    ``mirrored``: flipped left to right (a face turned one way becomes turned the other)."""
    with Image.open(photo) as opened:
        image = opened.convert("RGB")
    if mirrored:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = min(WIDTH / image.width, HEIGHT / image.height)
    size = (round(image.width * scale), round(image.height * scale))
    image = image.resize(size, Image.Resampling.BICUBIC)
    frame = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    frame.paste(image, ((WIDTH - size[0]) // 2, (HEIGHT - size[1]) // 2))
    return np.asarray(frame)


def i420(rgb: np.ndarray) -> bytes:
    """An ``(H, W, 3) uint8`` RGB frame (even H and W) as I420 planes, BT.601 studio range."""
    r, g, b = (rgb[..., c].astype(np.float32) for c in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    height, width = y.shape

    def half(plane: np.ndarray) -> np.ndarray:
        return plane.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))

    return b"".join(
        np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes() for p in (y, half(u), half(v))
    )


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = FPS) -> Path:
    """The frames, in order, as a Y4M file Chromium loops; equal frames are encoded once."""
    height, width = frames[0].shape[:2]
    encoded: dict[int, bytes] = {}
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            planes = encoded.setdefault(id(frame), i420(frame))
            out.write(b"FRAME\n" + planes)
    return path


def still(photo: Path, seconds: float = 1.0, fps: int = FPS) -> list[np.ndarray]:
    """One photo held before the camera: the same frame for ``seconds``."""
    frame = camera_frame(photo)
    return [frame] * max(1, round(seconds * fps))


def pose_loop(
    frontal: Path, turned_left: Path, period_s: float = 2.0, fps: int = FPS
) -> list[np.ndarray]:
    """One period of a head turning: left 30 %, frontal 20 %, right 30 %, frontal 20 %.

    ``turned_left`` is a photo of the person turned to *their* left (the nose towards the
    image's right); its mirror image is the right turn. The page captures 5 frames 0.4 s
    apart per step: over a 2 s period those fall one fifth of the period apart, whatever the
    phase. So an arc of 30 % always holds 1 or 2 of them (with 0.1 s to spare either side,
    for timer jitter): every step sees both turns, and at most two frames of each, which
    keeps the median of the ``center`` frames (the server's reference pose) on a frontal
    frame. The server passes a step when one of its frames moved far enough from that
    reference, so each step passes for this video, and the challenge's random step order
    does not matter."""
    left = camera_frame(turned_left)
    right = camera_frame(turned_left, mirrored=True)
    centre = camera_frame(frontal)
    frames = round(period_s * fps)
    turn, rest = round(frames * 0.3), round(frames * 0.2)
    return [*[left] * turn, *[centre] * rest, *[right] * turn, *[centre] * rest]
