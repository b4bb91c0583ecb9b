"""Resident memory of an nvllm process with SmolLM2 loaded (forward=fused_cpu), per dtype, and
the bytes of the weights the C step streams (its packed panels + the embedding it reads)."""
import json, resource, sys
import torch
from nvllm import LLM, SamplingParams
dtype = sys.argv[1]
def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
with LLM("smollm2", device="cpu", dtype=dtype, kv_cache={"num_blocks": 4}) as llm:
    llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    runner = llm.engine.executor
    step = runner.forward_strategy
    model_bytes = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    packed_bytes = sum(t.numel() * t.element_size() for t in step.packed)
    print(json.dumps(dict(dtype=dtype, rss_mib=round(rss_mib()), torch_module_weights_mib=round(model_bytes / 2**20),
                          fused_step_copies_mib=round(packed_bytes / 2**20))))
