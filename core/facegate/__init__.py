"""FaceGate: serverless face verification.

The package root stays torch-free so that light Lambda functions (gallery search, stores)
can ``import facegate`` without paying for torch. The heavy pipeline lives in
``facegate.pipeline`` and is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from facegate.errors import FaceGateError

__version__ = "0.1.0"

__all__ = ["FaceGateError", "FacePipeline", "Settings", "__version__"]

if TYPE_CHECKING:
    from facegate.pipeline.face_pipeline import FacePipeline
    from facegate.settings import Settings


def __getattr__(name: str) -> Any:
    if name == "FacePipeline":
        from facegate.pipeline.face_pipeline import FacePipeline

        return FacePipeline
    if name == "Settings":
        from facegate.settings import Settings

        return Settings
    raise AttributeError(f"module 'facegate' has no attribute {name!r}")
