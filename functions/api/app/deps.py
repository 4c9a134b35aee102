"""Dependencies: settings and the pipeline, built once per process and overridable in tests."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from fastapi import Depends

from facegate.pipeline import FacePipeline
from facegate.settings import Settings, get_settings


@lru_cache(maxsize=1)
def get_pipeline() -> FacePipeline:
    pipeline = FacePipeline(get_settings())
    pipeline.warm_up()
    return pipeline


SettingsDep = Annotated[Settings, Depends(get_settings)]
PipelineDep = Annotated[FacePipeline, Depends(get_pipeline)]
