"""The OpenAI-compatible server behind `python -m nvllm.serve`: app.py (HTTP routes, FastAPI),
protocol.py (request models, error body), engine_loop.py (the engine's own thread)."""
