"""The documented API is the real one: every method docs/plugins.md lists for a scheduler policy,
a sampler and a forward strategy is called by the engine. Each is overridden here by a subclass
that records the call (and otherwise does what the base does), registered like a plugin, and a
run that exercises every path (preemption, a request that does not fit, stop strings, overlap
scheduling) must have called all of them."""
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from nvllm import LLM, SamplingParams, registry
from nvllm.forward.eager import EagerForward
from nvllm.sampler.default import DefaultSampler
from nvllm.scheduler.fcfs import FCFSScheduler

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def documented(hook: str) -> set[str]:
    """The method names in the member table under `### \\`register_<hook>(register)\\``."""
    text = DOCS.read_text()
    section = text.split(f"### `register_{hook}(register)`")[1].split("\n### ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    names = set()
    for row in rows:
        first_cell = row.split("|")[1]
        names.update(re.findall(r"`(\w+)\(", first_cell))  # methods (a call in the cell), not attributes
    return names


CALLED: set[str] = set()


def recording(cls, names):
    """`cls` with each of `names` recording its call in CALLED."""
    def wrap(name):
        original = getattr(cls, name)

        def method(self, *args, **kwargs):
            CALLED.add(f"{type(self).name}.{name}")
            return original(self, *args, **kwargs)
        return method
    return type(f"Recording{cls.__name__}", (cls,), {name: wrap(name) for name in names})


SCHEDULER_HOOKS = documented("schedulers")
SAMPLER_HOOKS = documented("samplers")
FORWARD_HOOKS = documented("forward_strategies") - {"check", "resolve", "execute", "block_bytes", "check_request",
                                                    "describe", "warm_up", "release", "launch", "sample", "collect",
                                                    "weight_bytes", "expert_load"}


@dataclass
class SchedulerConfig:
    name: str = "recording_fcfs"


@dataclass
class SamplerConfig:
    name: str = "recording_default"


@dataclass
class ForwardConfig:
    name: str = "recording_eager"
    onednn: bool = False


@pytest.fixture(scope="module")
def registered():
    """What `nvllm.config.setup()` does for an installed plugin, for these classes in this process."""
    from hydra.core.config_store import ConfigStore

    from nvllm.config import setup

    setup()
    for family, base, names, config in (("scheduler", FCFSScheduler, SCHEDULER_HOOKS, SchedulerConfig),
                                        ("sampler", DefaultSampler, SAMPLER_HOOKS, SamplerConfig),
                                        ("forward", EagerForward, FORWARD_HOOKS, ForwardConfig)):
        cls = recording(base, [n for n in names if n != "__call__"])
        cls.name, cls.Config = config.name, config
        if "__call__" in names:
            original = base.__call__

            def call(self, *args, _original=original, _name=config.name, **kwargs):
                CALLED.add(f"{_name}.__call__")
                return _original(self, *args, **kwargs)
            cls.__call__ = call
        if cls.name not in registry.names(family):
            registry.register(family, cls, origin="tests")
            ConfigStore.instance().store(group=family, name=cls.name, node=config(), provider="tests")


def test_the_docs_list_the_hooks_this_test_covers():
    assert {"next_to_admit", "skip_blocked", "admission_victim", "running_order", "victim", "chunk", "preempt",
            "schedule", "update", "commit", "stop", "finish", "add", "is_finished"} <= SCHEDULER_HOOKS
    assert {"release"} <= SAMPLER_HOOKS and {"bind_kv_cache", "close"} <= FORWARD_HOOKS


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "overlap"])
def test_every_documented_hook_is_called(registered, tiny_text_path, async_scheduling):
    prompts = ["the cat sat", "a long story about", "hello there", "once upon a time", "the weather is"]
    plain = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    with LLM(tiny_text_path, max_model_len=64) as llm:  # the text a stop string is then taken from
        text = llm.generate(prompts[-1:], plain, use_tqdm=False)[0].outputs[0].text
    stop = text.strip()[len(text.strip()) // 2]
    params = [plain] * 4 + [SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop])]
    CALLED.clear()
    with LLM(tiny_text_path, scheduler="recording_fcfs", sampler="recording_default",
             forward={"name": "recording_eager", "onednn": False}, async_scheduling=async_scheduling,
             kv_cache={"block_size": 4, "num_blocks": 14}, max_model_len=64) as llm:
        # the last prompt arrives later: while it is due, each step asks is_finished whether to sleep until it
        outputs = llm.generate(prompts, params, use_tqdm=False, arrival_times=[0, 0, 0, 0, 0.2])
        assert llm.engine.scheduler.num_preemptions > 0, "the small cache forced no preemption"
    assert all(o.error is None for o in outputs)
    want = {f"recording_fcfs.{n}" for n in SCHEDULER_HOOKS} | {f"recording_default.{n}" for n in SAMPLER_HOOKS} \
        | {f"recording_eager.{n}" for n in FORWARD_HOOKS}
    if not async_scheduling:
        want.discard("recording_fcfs.commit")  # overlap scheduling's alone
    assert want <= CALLED, f"documented but never called: {sorted(want - CALLED)}"
