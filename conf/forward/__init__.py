"""The forward group's options other than auto are not files here: each registered strategy stores
its Config dataclass in Hydra's ConfigStore under this group, by its name. `python -m nvllm.run
--help` lists them."""
