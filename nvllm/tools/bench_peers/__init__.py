"""Peers that `python -m nvllm.tools.bench` runs beside nvllm: Hugging Face transformers (`hf`) and
llama.cpp through llama-cpp-python (`llamacpp`). Each module has a `run(spec) -> dict` that
the benchmark calls in a child process of its own."""
