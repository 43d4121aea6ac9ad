"""indexmem-serve: an OpenAI-compatible HTTP server over one engine (FastAPI + uvicorn)."""
