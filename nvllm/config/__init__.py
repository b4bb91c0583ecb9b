"""The configuration at the edge, by job: what it may say (schema.py: the switches, serve's own,
the schema Hydra composes against); what it resolves to (resolve.py: the typed `Config` an engine
is built from, `read_checkpoint` and `prepare`, which read the checkpoint once and decide every
`auto`); how it is composed (compose.py: `setup()`, which meets Hydra, `compose()`, the checks Hydra
does not make, the `--help` lines). The component families all three follow are one table:
nvllm/registry.py FAMILIES."""
from nvllm.config.compose import (check_composed, check_requested, components_help, compose, detect_architecture,
                                  group_options, setup)
from nvllm.config.resolve import (DEFAULT_MAX_MODEL_LEN, Checkpoint, Config, Resolved, check_tp, prepare,
                                  read_checkpoint, typed_config)
from nvllm.config.schema import EngineConfig, Schema, ServeConfig
from nvllm.errors import ConfigError

__all__ = ["DEFAULT_MAX_MODEL_LEN", "Checkpoint", "Config", "ConfigError", "EngineConfig", "Resolved", "Schema",
           "ServeConfig", "check_composed", "check_requested", "check_tp", "components_help", "compose",
           "detect_architecture", "group_options", "prepare", "read_checkpoint", "setup", "typed_config"]
