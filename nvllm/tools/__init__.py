"""Tools around the engine, each a command: `python -m nvllm.tools.report` (a sweep's tables and
plots), `nvllm.tools.bench` (nvllm against transformers and llama.cpp), `nvllm.tools.checkpoint`
(random-weight checkpoints). The engine never imports them."""

from nvllm.unshadow import unshadow

unshadow()  # before any other nvllm import: a directory named nvllm here may hide the package
