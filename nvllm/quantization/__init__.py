"""The quantization family: how the weights of the linear layers are stored and multiplied
(docs/quantization.md). `layout.py` is the packed layout every format shares; `base.py` the
contract; `none.py`, `weight_only.py` (int8, int4) and `gguf.py` the built-ins."""
