"""The kv_cache group's options are not files here: each registered component stores its Config
dataclass in Hydra's ConfigStore under this group, by its name (nvllm/registry.py). `python -m
nvllm.run --help` lists them."""
