"""Lambda entry point of the API function: Mangum adapts API Gateway (HTTP API, payload 2.0).

The pipeline is loaded at module scope, during the Lambda init phase, so the first request
does not pay for model loading twice and later ones not at all.
"""

from __future__ import annotations

from mangum import Mangum

from app.deps import get_pipeline
from app.main import create_app

get_pipeline()
app = create_app()
handler = Mangum(app, lifespan="off")
