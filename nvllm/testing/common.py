"""What every conformance suite shares: the component found by name, its Config convention."""
import dataclasses

import pytest

from nvllm import registry
from nvllm.config import compose, typed_config
from nvllm.plugins import load_plugins


class ComponentSuite:
    """What every component owes the framework: found by name, with a conforming Config."""

    family: str = ""
    # the registered component name under test
    name: str = ""
    # Config fields to run every test with, one run per dict
    configs: list[dict] = [{}]

    def pytest_generate_tests(self, metafunc):
        if "config_fields" in metafunc.fixturenames:
            metafunc.parametrize("config_fields", self.configs, ids=[_id(f) for f in self.configs])

    @property
    def component(self) -> type:
        load_plugins()
        return registry.get(self.family, self.name)

    @pytest.fixture
    def config(self, config_fields):
        return self.component.Config(**config_fields)

    def test_registered_under_its_name(self):
        assert self.name, f"set `name` on {type(self).__name__} to the {self.family} under test"
        assert self.component.name == self.name

    def test_config_convention(self, config_fields):
        config_cls = self.component.Config
        assert dataclasses.is_dataclass(config_cls), "Config must be a dataclass"
        missing = [f.name for f in dataclasses.fields(config_cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        assert not missing, f"Config fields need defaults (the CLI builds it from nothing): {missing}"
        assert config_cls().name == self.name, "Config's `name` field must default to the component name"
        composed = compose(**{self.family: {"name": self.name, **config_fields}})[self.family]
        assert typed_config(self.family, composed) == config_cls(**config_fields)


def _id(fields: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in fields.items()) or "defaults"
