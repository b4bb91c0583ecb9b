"""forward=simulated: a step computes no tensors. Its duration comes from a cost model of the step's
shape (nvllm/simulation/cost.py) and a virtual clock advances by it, so arrivals, TTFT, TPOT, ITL
and goodput are all in simulated time. Everything else is the real engine: the scheduler, the KV
cache allocator (sized from the simulated device's memory less the weights and activations),
prefix caching, preemption, the metrics.

The cost model is a profile measured by `python -m nvllm.tools.profile` (`forward.profile=FILE`:
calibrated), else a roofline of the model's shape on `forward.hardware` (uncalibrated: every
output says so). It needs no weights: a model's config.json or a named shape (`model.shape`).
A request ends at its max_tokens, never on a sampled token, so what depends on the text — stop
strings, stop tokens, EOS, logprobs, text prompts — is refused. Never auto's choice.

It is an executor (nvllm/step.py), not a forward strategy: it stands in for the whole model runner
(weights, KV cache tensors, forward pass and sampler), and each plan gives a StepResult of stand-in
token ids.

A cost model of your own (one fitted to another GPU, say): subclass SimulatedForward, give it a
name and Config, return your CostModel from `cost_model()`, register it like any strategy."""
import time
from dataclasses import dataclass, replace
from typing import Optional

from nvllm import registry
from nvllm.clock import VirtualClock
from nvllm.errors import ConfigError
from nvllm.forward.base import ForwardTarget
from nvllm.hookspecs import hookimpl
from nvllm.simulation.cost import DTYPE_BYTES, CostModel, ProfileCost, ModelDims, RooflineCost, StepShape, load_profile
from nvllm.kv_cache.base import CPU_DEFAULT_BUDGET_GB
from nvllm.simulation.hardware import hardware
from nvllm.step import Executor, StepPlan, StepResult

AUTO = "auto"


class SimulatedForward(Executor):
    """No tensors: each step advances a virtual clock by a cost model's time (a profile, else an uncalibrated roofline)."""

    name = "simulated"
    auto_rank: dict = {}  # never auto's choice

    @dataclass
    class Config:
        name: str = "simulated"
        # a profile written by python -m nvllm.tools.profile (calibrated); null: the roofline model of `hardware` (uncalibrated)
        profile: Optional[str] = None
        # the device simulated, per tensor-parallel rank: auto (the profile's; without one: cpu, this machine), or an
        # entry of nvllm/simulation/hardware.py: a100, h100, h200, cpu
        hardware: str = AUTO
        # weights and KV cache dtype simulated: auto (the profile's; without one: the hardware's, bfloat16 on a GPU)
        dtype: str = AUTO
        # the forward strategy whose steps are simulated: auto (the profile's); naming another is refused
        strategy: str = AUTO

    @classmethod
    def check(cls, target: ForwardTarget) -> None:
        """It runs anywhere (it runs nothing)."""

    @classmethod
    def resolve(cls, config, target: ForwardTarget):
        """Every auto filled from the profile (or the hardware entry); a profile that was measured under
        other conditions than the run asks for is refused, naming the difference."""
        if config.dtype not in (AUTO, *DTYPE_BYTES):
            raise ConfigError(f"forward.dtype={config.dtype!r} is not allowed: use auto, {', '.join(DTYPE_BYTES)}")
        if not config.profile:
            hw = hardware("cpu" if config.hardware == AUTO else config.hardware)
            if target.tp > 1 and not hw.link_bandwidth:
                raise ConfigError(f"tp={target.tp} needs devices linked to each other and the hardware entry {hw.name!r} "
                                  f"has no link; simulate a GPU entry (forward.hardware=h200, ...)")
            if config.strategy not in (AUTO, "roofline"):
                raise ConfigError(f"forward.strategy={config.strategy} needs a profile of it: the roofline models no "
                                  f"particular strategy. Measure one (python -m nvllm.tools.profile forward="
                                  f"{config.strategy} --out FILE) and pass forward.profile=FILE")
            return replace(config, hardware=hw.name, dtype=hw.default_dtype if config.dtype == AUTO else config.dtype,
                           strategy="roofline")
        profile = load_profile(config.profile)
        measured = {"hardware": profile["hardware"]["name"], "dtype": profile["dtype"], "strategy": profile["forward"]}
        for key, value in measured.items():
            asked = getattr(config, key)
            if asked not in (AUTO, value):
                raise ConfigError(f"forward.{key}={asked} but forward.profile={config.profile} was measured with "
                                  f"{key} {value}: drop forward.{key}, or measure a profile with it "
                                  f"(python -m nvllm.tools.profile ... --out FILE)")
        if profile["tp"] != target.tp:
            raise ConfigError(f"tp={target.tp} but forward.profile={config.profile} was measured at tp={profile['tp']}: "
                              f"a profile does not extrapolate across tp. Measure one at tp={target.tp}, or drop "
                              f"forward.profile for the (uncalibrated) roofline")
        measured_format = profile.get("quantization", "none")  # a profile written before formats: dtype weights
        if measured_format != target.quantization:
            raise ConfigError(f"quantization={target.quantization} but forward.profile={config.profile} was measured "
                              f"with quantization={measured_format}: a profile's coefficients hold its format's bytes. "
                              f"Measure one with it (python -m nvllm.tools.profile quantization={target.quantization} "
                              f"... --out FILE), or drop forward.profile for the (uncalibrated) roofline, which prices "
                              f"the format's bytes")
        return replace(config, **measured)

    def __init__(self, config, run_config, hf_config):
        """`config`: forward=simulated's Config (resolved); `run_config`: the engine's; `hf_config`:
        the model's transformers config (or a named shape's)."""
        self.config, self.run = config, run_config
        self.clock = VirtualClock()
        self.vocab = hf_config.vocab_size
        self.dims = ModelDims.of(hf_config)
        self.tp = run_config.tp
        # bytes a linear layer's weight takes in the run's weight format (quantization=int8: 1 + 2/32)
        quantization = run_config.quantization or registry.make_config("quantization", "none")
        self.quantization = quantization.name
        quantizer = registry.get("quantization", quantization.name)
        self.linear_bytes = quantizer.bytes_per_weight(quantization, DTYPE_BYTES[config.dtype])
        # and a weight of the embedding and LM head (a packed format holds them in int8)
        self.embedding_bytes = quantizer.embedding_bytes_per_weight(quantization, DTYPE_BYTES[config.dtype])
        # moe.expert_parallel: a mixture of experts' experts placed whole on the tp ranks
        self.expert_parallel = run_config.moe.expert_parallel
        self.profile = load_profile(config.profile) if config.profile else None
        if self.profile is not None:
            self._check_profile(run_config)
        self.cost = self.cost_model()
        self.steps = 0
        self._host_start = (time.perf_counter(), time.process_time())
        self.num_blocks = self.kv_cache_blocks(run_config.kv_cache)

    def cost_model(self) -> CostModel:
        """The model each step's duration comes from (a plugin overrides this)."""
        if self.profile is not None:
            return ProfileCost(self.profile["coefficients_s"], self.profile, self.config.profile)
        return RooflineCost(self.dims, hardware(self.config.hardware), self.config.dtype, self.tp, self.expert_parallel,
                            self.linear_bytes, self.embedding_bytes)

    def _check_profile(self, run_config):
        """The profile's model shape must be the run's; a named attention backend must be the profile's."""
        measured = self.profile["model"].get("dims")
        if measured != self.dims.as_dict():
            diff = {k: (v, self.dims.as_dict().get(k)) for k, v in (measured or {}).items() if self.dims.as_dict().get(k) != v}
            raise ConfigError(f"forward.profile={self.config.profile} was measured on another model shape "
                              f"({', '.join(f'{k}: {a} there, {b} here' for k, (a, b) in diff.items()) or 'none recorded'}); "
                              f"profile this model (python -m nvllm.tools.profile <this run's overrides> --out FILE)")
        attention = run_config.attention
        if run_config.attention_choice is None and attention.name != self.profile["attention"]:
            raise ConfigError(f"attention={attention.name} but forward.profile={self.config.profile} was measured with "
                              f"attention={self.profile['attention']} (a profile of one kernel mispredicts another): "
                              f"drop attention= or profile attention={attention.name}")

    # -- the cache it stands in for ---------------------------------------------------------------
    def kv_cache_blocks(self, kv_config) -> int:
        """As the runner sizes a real cache: kv_cache.num_blocks, else the memory budget over a
        block's bytes on one rank: kv_cache.memory_budget_gb, else on a GPU its memory times
        gpu_memory_utilization less the weights (per rank) and the largest step's activations,
        else (a CPU) the runner's CPU default; never more than max_num_seqs full-length sequences use."""
        if kv_config.num_blocks:
            return kv_config.num_blocks
        c, dtype_bytes = self.run, DTYPE_BYTES[self.config.dtype]
        block_bytes = self.dims.kv_bytes_per_token(dtype_bytes, self.tp) * kv_config.block_size
        kind, memory_gib = self._memory()
        weights = self.dims.weight_bytes(dtype_bytes, self.linear_bytes, embedding_bytes=self.embedding_bytes) / self.tp
        if kv_config.memory_budget_gb is not None:
            budget = kv_config.memory_budget_gb * 2**30
        elif kind == "gpu":
            activations = self.dims.activation_bytes(c.max_num_batched_tokens, c.max_num_seqs, dtype_bytes, self.tp)
            budget = memory_gib * 2**30 * kv_config.gpu_memory_utilization - weights - activations
        else:
            budget = CPU_DEFAULT_BUDGET_GB * 2**30
        blocks_per_seq = -(-c.max_model_len // kv_config.block_size)
        num_blocks = min(int(budget // block_bytes), c.max_num_seqs * blocks_per_seq)
        if num_blocks < 1:
            raise MemoryError(f"forward=simulated: {memory_gib:.0f} GiB on {self.config.hardware} less "
                              f"{weights / 2**30:.1f} GiB of weights per rank leaves no KV cache block of "
                              f"{block_bytes / 2**20:.1f} MiB; raise tp or pick a larger device")
        return num_blocks

    def _memory(self) -> tuple[str, float]:
        if self.profile is not None:
            return self.profile["hardware"]["kind"], self.profile["hardware"]["memory_gib"]
        hw = hardware(self.config.hardware)
        return hw.kind, hw.memory_gib

    def block_bytes(self) -> int:
        """A cache block's bytes on one rank, at the simulated dtype (the runner's _block_bytes)."""
        return self.dims.kv_bytes_per_token(DTYPE_BYTES[self.config.dtype], self.tp) * self.run.kv_cache.block_size

    # -- the step ---------------------------------------------------------------------------------
    def execute(self, plan: StepPlan) -> StepResult:
        self.clock.advance(self.cost.step_seconds(StepShape.of(plan)))
        self.steps += 1
        # a stand-in token id, never read for lengths (those come from max_tokens): a function of the
        # sequence's last token and length, so that equal greedy sequences continue alike, as a
        # greedy model's would (their prefix-cache hits then match a real run's)
        return StepResult([(s.last_token * 7919 + s.num_tokens + (s.seq_id if s.sampling_params.temperature else 0))
                           % self.vocab if samples else None for s, samples in zip(plan.seqs, plan.samples)])

    def check_request(self, prompt, sampling_params) -> None:
        why = None
        if isinstance(prompt, str):
            why = ("prompts are token ids: a simulated run has no tokenizer. Use a token-id workload (workload=random, "
                   "sharegpt, shared_prefix, or a trace with input_len)")
        elif sampling_params.stop or sampling_params.stop_token_ids:
            why = ("a request ends at max_tokens, and stop strings or stop tokens depend on text it does not generate; "
                   "drop stop and stop_token_ids")
        elif not sampling_params.ignore_eos:
            why = ("a request ends at max_tokens and cannot end on a sampled EOS; set ignore_eos=true "
                   "(workload.ignore_eos=true, or sampling.ignore_eos=true)")
        elif getattr(sampling_params, "logprobs", None) is not None:
            why = "there are no logits to take logprobs from; drop logprobs"
        if why:
            raise ValueError(f"forward={self.name}: {why}")

    def describe(self) -> dict:
        """What metrics.json says of the simulation: the cost model, its provenance and measured
        error, the simulated device, and the real time the run took on this host."""
        wall, cpu = self._host_start
        return {"hardware": self.config.hardware, "dtype": self.config.dtype, "quantization": self.quantization,
                **self.cost.describe(),
                "strategy_simulated": self.config.strategy, "tp": self.tp, "steps": self.steps,
                "host_wall_s": time.perf_counter() - wall, "host_cpu_s": time.process_time() - cpu}


@hookimpl
def register_forward_strategies(register):
    register(SimulatedForward)
