"""Tools around the engine, each a command: `python -m nvllm.tools.report` (a sweep's tables and
plots), `nvllm.tools.bench` (nvllm against transformers and llama.cpp), `nvllm.tools.checkpoint`
(random-weight checkpoints). The engine never imports them."""
