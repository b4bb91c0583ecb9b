"""The quantization family: how the weights of the linear layers are stored and multiplied
(docs/quantization.md). `base.py` is the contract; `none.py`, `weight_only.py` (int8, int4) and
`gguf.py` the built-ins; the packed layout they share is nvllm/models/layers/packed.py."""
