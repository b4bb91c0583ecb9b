"""What one step costs, from its shape: the cost models forward=simulated advances its clock by.

A step's shape is what the scheduler gave it: prefill tokens and the (query, key) pairs their
attention covers, decode sequences and the KV tokens they read. Two models turn it into seconds:

- `ProfileCost`, a profile: seconds = step + max(weights, token·(P + D)) + prefill_attention·A
  + decode_seq·D + decode_kv·K — the matmuls cost the larger of streaming the weights once and
  computing the step's P prefill and D decode tokens — its coefficients fitted by least squares
  to steps that `python -m nvllm.tools.profile` timed on a real forward strategy (calibrated);
- `RooflineCost`: the larger of the step's memory traffic (weights once, the linear layers' in the
  run's weight format, the KV it reads and writes) over the hardware's bandwidth and its FLOPs over
  its matmul rate, plus tensor-parallel all-reduces and nvllm's host time per step; built from the
  model's shape and a hardware entry, never measured (uncalibrated). For a mixture of experts the
  weights a step reads are the experts its tokens touch (`ModelDims.experts_touched`), placed by
  tensor or expert parallelism.

A third-party cost model subclasses CostModel and is returned by a strategy built on
forward=simulated (docs/plugins.md)."""
import json
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nvllm.errors import ConfigError
from nvllm.simulation.hardware import Hardware

# the profile's terms: a step's fixed cost; the matmuls' floor (streaming the weights once) and their
# cost per token; per (query, key) pair of prefill attention; per decoding sequence beyond its
# token's matmuls (its LM-head row, sampling); per KV token a decode reads
TERMS = ("step", "weights", "token", "prefill_attention", "decode_seq", "decode_kv")
PROFILE_FORMAT = 1  # the "nvllm_profile" version a profile JSON carries


@dataclass(slots=True)
class StepShape:
    """What a step computes. A sequence running one token is a decode (it reads its context);
    one running more is a prefill (chunk)."""
    prefill_seqs: int = 0
    prefill_tokens: int = 0
    # (query, key) pairs the prefill tokens attend: each token sees its cached context and the step's earlier tokens
    prefill_attention: int = 0
    # KV tokens the prefills read or write (their whole context)
    prefill_kv: int = 0
    decode_seqs: int = 0
    # KV tokens the decodes read (their whole context, the new token included)
    decode_kv: int = 0

    @classmethod
    def of(cls, plan) -> "StepShape":
        """The shape of a step that runs `plan` (a StepPlan)."""
        shape = cls()
        for seq, q in zip(plan.seqs, plan.num_tokens):
            start = seq.num_computed_tokens
            if q == 1:
                shape.decode_seqs += 1
                shape.decode_kv += start + 1
            else:
                shape.prefill_seqs += 1
                shape.prefill_tokens += q
                shape.prefill_attention += q * start + q * (q + 1) // 2
                shape.prefill_kv += start + q
        return shape

    @classmethod
    def synthetic(cls, prefills: list[tuple[int, int]] = (), decodes: list[int] = ()) -> "StepShape":
        """The shape of prefills given as (cached context, query tokens) and decodes as context lengths
        before the new token (the profile's grid)."""
        shape = cls()
        for start, q in prefills:
            shape.prefill_seqs += 1
            shape.prefill_tokens += q
            shape.prefill_attention += q * start + q * (q + 1) // 2
            shape.prefill_kv += start + q
        shape.decode_seqs = len(decodes)
        shape.decode_kv = sum(decodes) + len(decodes)
        return shape

    @property
    def tokens(self) -> int:
        return self.prefill_tokens + self.decode_seqs


class CostModel(ABC):
    """A step's duration, in seconds, from its shape."""

    # True: fitted to steps measured on real hardware; False: an assumption (labelled uncalibrated)
    calibrated: bool = False

    @abstractmethod
    def step_seconds(self, step: StepShape) -> float:
        """Seconds the step takes (> 0)."""

    def describe(self) -> dict:
        """What metrics.json records of the model: its kind, where it came from, its measured error."""
        return {"cost_model": type(self).__name__, "calibrated": self.calibrated}


# -- the model's shape ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelDims:
    """A decoder's sizes (Llama, Qwen2/3, and a mixture of experts: Qwen3-MoE, Mixtral), from its config.json."""
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    # the dense MLP's width (a mixture of experts: its dense layers' only)
    intermediate: int
    vocab: int
    tied: bool
    # a mixture of experts (0 for a dense model): routed experts per sparse layer, the experts each
    # token is routed to, each expert's SwiGLU width, and the layers that are sparse (the others dense)
    experts: int = 0
    experts_per_tok: int = 0
    expert_intermediate: int = 0
    sparse_layers: int = 0

    @classmethod
    def of(cls, hf_config) -> "ModelDims":
        """From a transformers config. The experts: `num_experts` (Qwen3-MoE) or `num_local_experts`
        (Mixtral), each `moe_intermediate_size` wide (Mixtral: `intermediate_size`); a Qwen3-MoE layer is
        dense when listed in `mlp_only_layers` or off the `decoder_sparse_step` stride."""
        heads, layers = hf_config.num_attention_heads, hf_config.num_hidden_layers
        moe = {}
        experts = getattr(hf_config, "num_experts", None) or getattr(hf_config, "num_local_experts", None) or 0
        if experts:
            step, dense = getattr(hf_config, "decoder_sparse_step", None) or 1, set(getattr(hf_config, "mlp_only_layers", None) or ())
            moe = dict(experts=experts, experts_per_tok=hf_config.num_experts_per_tok,
                       expert_intermediate=getattr(hf_config, "moe_intermediate_size", None) or hf_config.intermediate_size,
                       sparse_layers=sum(1 for i in range(layers) if i not in dense and (i + 1) % step == 0))
        return cls(layers, hf_config.hidden_size, heads,
                   getattr(hf_config, "num_key_value_heads", None) or heads,
                   getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads,
                   hf_config.intermediate_size, hf_config.vocab_size, bool(getattr(hf_config, "tie_word_embeddings", False)),
                   **moe)

    @property
    def expert_params(self) -> int:
        """One expert's weights (gate, up, down)."""
        return 3 * self.hidden * self.expert_intermediate

    @property
    def shared_linear_params(self) -> int:
        """Matmul weights every token runs through: attention, the dense layers' MLPs, the routers."""
        attention = self.hidden * (self.heads + 2 * self.kv_heads) * self.head_dim + self.heads * self.head_dim * self.hidden
        dense = self.layers - self.sparse_layers
        return self.layers * attention + dense * 3 * self.hidden * self.intermediate + self.sparse_layers * self.hidden * self.experts

    @property
    def linear_params(self) -> int:
        """Matmul weights of the decoder layers (q, k, v, o, gate, up, down; every expert, the routers)."""
        return self.shared_linear_params + self.sparse_layers * self.experts * self.expert_params

    @property
    def active_linear_params(self) -> int:
        """The matmul weights one token runs through: the shared ones and its `experts_per_tok` experts."""
        return self.shared_linear_params + self.sparse_layers * self.experts_per_tok * self.expert_params

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        """Every weight: the layers, the embedding and (untied) the LM head; norms are left out (< 0.1 %)."""
        return self.linear_params + self.embedding_params

    @property
    def active_params(self) -> int:
        """The weights one token uses (a dense model: all of them)."""
        return self.active_linear_params + self.embedding_params

    def experts_touched(self, tokens: float) -> float:
        """Expected distinct experts a step's `tokens` tokens route to, per sparse layer, assuming each
        token picks its `experts_per_tok` of the `experts` uniformly at random, independently of the
        others: an expert escapes one token with probability 1 - k/E, so E·(1 - (1 - k/E)^tokens) —
        k for one token, tending to E. Real routers are skewed (more tokens to fewer experts, so fewer
        touched than this); tokens of one sequence are correlated."""
        if not self.experts:
            return 0.0
        return self.experts * (1 - (1 - self.experts_per_tok / self.experts) ** tokens)

    def weight_bytes(self, dtype_bytes: float, linear_bytes: float, linear_params: int | None = None,
                     embedding_bytes: float | None = None) -> float:
        """Bytes of `linear_params` linear weights (default: all of them) at `linear_bytes` each and of
        the embedding (and LM head) at `embedding_bytes` each (None: `dtype_bytes`; a packed format
        holds them in int8)."""
        linear = self.linear_params if linear_params is None else linear_params
        embedding = dtype_bytes if embedding_bytes is None else embedding_bytes
        return linear * linear_bytes + self.embedding_params * embedding

    def kv_bytes_per_token(self, dtype_bytes: int, tp: int = 1) -> int:
        """K and V of one token in every layer, on one of `tp` ranks."""
        return 2 * self.layers * (self.kv_heads // tp) * self.head_dim * dtype_bytes

    def activation_bytes(self, tokens: int, rows: int, dtype_bytes: int, tp: int = 1) -> int:
        """The working set of a step of `tokens` tokens sampling `rows` rows, on one rank: a few
        hidden-sized buffers, q/k/v and the MLP's gate and up projections per token (the widest of the
        dense MLP and the token's experts), and float32 logits per row (an estimate: the runner measures
        it where the model really runs)."""
        mlp = max(self.intermediate if self.sparse_layers < self.layers else 0, self.experts_per_tok * self.expert_intermediate)
        per_token = 4 * self.hidden + ((self.heads + 2 * self.kv_heads) * self.head_dim + 2 * mlp) // tp
        return tokens * per_token * dtype_bytes + rows * self.vocab * 4

    def as_dict(self) -> dict:
        """Its fields (a dense model's without the experts' zeros: profiles record dense dims so)."""
        fields = asdict(self)
        return fields if self.experts else {k: v for k, v in fields.items() if k not in _MOE_FIELDS}


_MOE_FIELDS = ("experts", "experts_per_tok", "expert_intermediate", "sparse_layers")


def expected_max_normal(n: int) -> float:
    """E[max of n independent standard normal variables] (0 for n = 1; 0.564 for 2, 1.029 for 4, 1.424 for 8)."""
    if n <= 1:
        return 0.0
    x = np.linspace(-8.0, 8.0, 4001)
    pdf = np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    return float(np.sum(x * n * pdf * cdf ** (n - 1)) * (x[1] - x[0]))


DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# -- the roofline -------------------------------------------------------------------------------------
# nvllm's host side of a step (scheduling, packing the inputs, postprocess, deltas: the Python
# around the forward pass; sampling is device work on a GPU) as a fixed part and a part per
# sequence, fitted in experiments/results/2026-12-03-cpu-2core-epyc/simulation/host/ (measured on
# this project's 2-core CPU); a GPU step waits for it (no overlap scheduling)
HOST_STEP_S = 4.4e-5
HOST_SEQ_S = 7.3e-6


class RooflineCost(CostModel):
    """max(memory traffic / bandwidth, FLOPs / matmul rate) + all-reduces + host time, per step.

    A mixture of experts' layers on `tp` ranks: tensor parallelism (the default) splits every
    expert's width, so each rank reads 1/tp of every expert the step's tokens touch and computes
    1/tp of every token's experts; expert parallelism (`expert_parallel`, nvllm's
    moe.expert_parallel) places experts/tp whole experts on each rank, which reads each of its
    own touched experts whole and computes the tokens routed to them. The step waits for the
    busiest rank: its touched experts and routed tokens are taken as their mean plus the expected
    maximum of tp standard normals times their standard deviation (binomial, capped at all of the
    rank's). Attention stays tensor-parallel and the ranks' partial sums are all-reduced per layer
    either way (no all-to-all dispatch), so the communication is the same; what differs is the
    imbalance, and tp's narrower matmuls, whose lower efficiency is not modelled."""

    calibrated = False

    def __init__(self, dims: ModelDims, hw: Hardware, dtype: str, tp: int = 1, expert_parallel: bool = False,
                 linear_bytes: float | None = None, embedding_bytes: float | None = None):
        """`linear_bytes`: bytes a weight of the decoder's linear layers (attention, MLPs, experts) takes
        in the run's weight format (quantization: int8 1 + 2/32, ...); `embedding_bytes`: the same for
        the embedding and LM head (a packed format: int8's); None: `dtype`'s. A weight-only format
        leaves the FLOPs as they are."""
        if dtype not in hw.flops:
            raise ConfigError(f"the hardware entry {hw.name!r} has no matmul rate for {dtype} (it has "
                              f"{', '.join(hw.flops)}); set forward.dtype to one of those")
        if expert_parallel and not dims.experts:
            raise ConfigError("moe.expert_parallel=true places a mixture of experts' experts on ranks, and this model "
                              "has none; drop moe.expert_parallel")
        if expert_parallel and dims.experts % tp:
            fits = [t for t in range(1, dims.experts + 1) if dims.experts % t == 0 and t <= 64]
            raise ConfigError(f"moe.expert_parallel=true places whole experts on each of tp={tp} ranks, and the model's "
                              f"{dims.experts} experts do not divide by {tp}: use tp in {fits}, or "
                              f"moe.expert_parallel=false (each expert's width split tp ways)")
        self.dims, self.hw, self.dtype, self.tp, self.expert_parallel = dims, hw, dtype, tp, expert_parallel
        self.bytes = DTYPE_BYTES[dtype]
        self.linear_bytes = self.bytes if linear_bytes is None else linear_bytes
        self.embedding_bytes = self.bytes if embedding_bytes is None else embedding_bytes
        self.shared_weight_bytes = dims.weight_bytes(self.bytes, self.linear_bytes, dims.shared_linear_params,
                                                     self.embedding_bytes) / tp
        self.kv_bytes = dims.kv_bytes_per_token(self.bytes, tp)
        self.flops_per_token = 2 * dims.shared_linear_params / tp
        self.flops_per_row = 2 * dims.hidden * dims.vocab / tp  # the LM head, for each sampled row
        self.flops_per_pair = 4 * dims.layers * dims.heads * dims.head_dim / tp  # QK^T and PV
        self.z = expected_max_normal(tp) if expert_parallel else 0.0
        self.bandwidth = hw.memory_bandwidth * hw.bandwidth_efficiency
        self.rate = hw.flops[dtype] * hw.flops_efficiency

    def experts_read(self, tokens: int) -> tuple[float, float]:
        """(experts' worth of weights one rank reads per sparse layer, experts' worth of token rows it
        computes): its share of the experts `tokens` tokens touch, and of their tokens·k routings."""
        d = self.dims
        touched, routed = d.experts_touched(tokens), tokens * d.experts_per_tok
        if not self.expert_parallel:
            return touched / self.tp, routed / self.tp
        n, q = d.experts / self.tp, touched / d.experts  # a rank's experts; the chance that one is touched
        busiest = min(n, n * q + self.z * math.sqrt(n * q * (1 - q)))
        p = 1 / self.tp  # the chance that a routing lands on a given rank
        return busiest, min(routed, routed * p + self.z * math.sqrt(routed * p * (1 - p)))

    def step_seconds(self, step: StepShape) -> float:
        tokens = step.prefill_tokens + step.decode_seqs
        rows = step.prefill_seqs + step.decode_seqs
        memory = self.shared_weight_bytes + self.kv_bytes * (step.decode_kv + step.prefill_kv + step.prefill_tokens)
        flops = (self.flops_per_token * tokens + self.flops_per_row * rows
                 + self.flops_per_pair * (step.prefill_attention + step.decode_kv))
        if self.dims.experts:
            read, computed = self.experts_read(tokens)
            memory += self.dims.sparse_layers * read * self.dims.expert_params * self.linear_bytes
            flops += 2 * self.dims.sparse_layers * computed * self.dims.expert_params
        seconds = max(memory / self.bandwidth, flops / self.rate) + HOST_STEP_S + HOST_SEQ_S * rows
        if self.tp > 1:  # two all-reduces of the hidden states per layer, and one after the embedding (ring)
            volume = 2 * (self.tp - 1) / self.tp * tokens * self.dims.hidden * self.bytes
            seconds += (2 * self.dims.layers + 1) * (self.hw.allreduce_latency + volume / self.hw.link_bandwidth)
        return seconds

    def describe(self) -> dict:
        moe = {"expert_parallel": self.expert_parallel,
               "experts_touched": "uniform routing: E*(1-(1-k/E)^tokens) per sparse layer"} if self.dims.experts else {}
        return {"cost_model": "roofline", "calibrated": False, "hardware": self.hw.name,
                "hardware_source": self.hw.source, "dtype": self.dtype, "linear_bytes_per_weight": self.linear_bytes,
                "embedding_bytes_per_weight": self.embedding_bytes, "tp": self.tp, **moe,
                "assumed": {"bandwidth_efficiency": self.hw.bandwidth_efficiency,
                            "flops_efficiency": self.hw.flops_efficiency,
                            "allreduce_latency_s": self.hw.allreduce_latency,
                            "host_step_s": HOST_STEP_S, "host_seq_s": HOST_SEQ_S},
                "measured_error": None}


# -- the profile --------------------------------------------------------------------------------------
class ProfileCost(CostModel):
    """A profile: seconds = step + max(weights, token·tokens) + prefill_attention·A + decode_seq·D
    + decode_kv·K, fitted to measured steps."""

    calibrated = True

    def __init__(self, coefficients: dict, profile: dict | None = None, path: str | None = None):
        missing = set(TERMS) - set(coefficients)
        if missing:
            raise ConfigError(f"profile {path or ''} lacks the coefficients {sorted(missing)}: write it again with "
                              f"python -m nvllm.tools.profile")
        self.coefficients = {t: float(coefficients[t]) for t in TERMS}
        self._c = [self.coefficients[t] for t in TERMS]
        self.profile, self.path = profile or {}, path

    def step_seconds(self, step: StepShape) -> float:
        step_s, weights, token, attention, decode_seq, decode_kv = self._c
        return max(step_s + max(weights, token * (step.prefill_tokens + step.decode_seqs))
                   + attention * step.prefill_attention + decode_seq * step.decode_seqs + decode_kv * step.decode_kv, 1e-9)

    def describe(self) -> dict:
        p = self.profile
        return {"cost_model": "profile", "calibrated": True, "profile": self.path,
                "hardware": (p.get("hardware") or {}).get("name"), "device": (p.get("hardware") or {}).get("device"),
                "measured_with": {k: p.get(k) for k in ("forward", "attention", "dtype", "tp", "threads")},
                "measured_on": (p.get("measured") or {}).get("date"),
                "coefficients_s": self.coefficients, "fit": p.get("fit"),
                "measured_error": p.get("validation")}

    @classmethod
    def fit(cls, shapes: list[StepShape], seconds: list[float]) -> tuple["ProfileCost", dict]:
        """Least squares on relative error (each step weighs as much as any other, short or long),
        no coefficient negative. For a ridge of N0 tokens (weights = token·N0) the model is linear
        in its coefficients — step + token·max(N0, tokens) + ... — so each candidate N0 (0, and the
        token counts measured) is fitted and the best kept; within a fit a term whose coefficient
        comes out negative is dropped (set to 0) and the rest refitted. Returns the model and its
        error on the steps it was fitted to."""
        y = np.array(seconds, dtype=np.float64)
        w = 1 / y
        tokens = np.array([s.tokens for s in shapes], dtype=np.float64)
        rest = np.array([(1, s.prefill_attention, s.decode_seqs, s.decode_kv) for s in shapes], dtype=np.float64)
        best = None
        for ridge in sorted({0.0, *tokens}):
            x = np.column_stack([rest[:, 0], np.maximum(tokens, ridge), rest[:, 1:]])  # step, token, A, D, K
            active = [j for j in range(x.shape[1]) if x[:, j].any()]
            while True:
                coef, *_ = np.linalg.lstsq(x[:, active] * w[:, None], y * w, rcond=None)
                if (coef >= 0).all() or len(active) == 1:
                    break
                active.pop(int(np.argmin(coef)))
            full = np.zeros(x.shape[1])
            full[active] = np.maximum(coef, 0)
            loss = float((((x @ full) - y) * w) ** 2 @ np.ones(len(y)))
            if best is None or loss < best[0]:
                best = (loss, ridge, full)
        _, ridge, (step_s, token, attention, decode_seq, decode_kv) = best
        model = cls(dict(step=step_s, weights=token * ridge, token=token, prefill_attention=attention,
                         decode_seq=decode_seq, decode_kv=decode_kv))
        errors = np.array([abs(model.step_seconds(s) - t) / t for s, t in zip(shapes, seconds)])
        return model, {"steps": len(y), "ridge_tokens": ridge, "median_abs_rel_error": float(np.median(errors)),
                       "p90_abs_rel_error": float(np.percentile(errors, 90)), "max_abs_rel_error": float(errors.max()),
                       "zero_terms": [t for t, v in model.coefficients.items() if v == 0]}


def load_profile(path: str) -> dict:
    """A profile JSON (written by nvllm.tools.profile), checked for the fields a run reads."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"forward.profile={path!r}: no such file; write one with "
                          f"python -m nvllm.tools.profile <the run's overrides> --out {path}")
    try:
        profile = json.loads(file.read_text())
    except ValueError as e:
        raise ConfigError(f"forward.profile={path!r} is not JSON ({e}); write it again with python -m nvllm.tools.profile") from None
    if not isinstance(profile, dict) or profile.get("nvllm_profile") != PROFILE_FORMAT:
        raise ConfigError(f"forward.profile={path!r} is not an nvllm profile (format {PROFILE_FORMAT}); write one with "
                          f"python -m nvllm.tools.profile")
    for key in ("hardware", "model", "dtype", "tp", "forward", "attention", "coefficients_s"):
        if key not in profile:
            raise ConfigError(f"forward.profile={path!r} lacks {key!r}; write it again with python -m nvllm.tools.profile")
    return profile


def rel_error(simulated: float, measured: float) -> float:
    return (simulated - measured) / measured if measured else math.nan
