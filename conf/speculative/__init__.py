"""The speculative group's options are not files here: nvllm.config.setup() stores each registered
component's Config dataclass in Hydra's ConfigStore under this group, by its name. `python -m
nvllm.run --help` lists them."""
