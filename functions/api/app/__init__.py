"""The FaceGate HTTP API: a FastAPI app, thin routes over the ``facegate`` library."""
