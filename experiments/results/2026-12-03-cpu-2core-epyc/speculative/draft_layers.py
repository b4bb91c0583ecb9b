"""speculative=draft (self-speculative: the target's first num_layers layers) on 4 grounded prompts,
48 greedy tokens each, k=4: acceptance against num_layers (deterministic: greedy tokens)."""
from nvllm import LLM, SamplingParams
from nvllm.config import compose

prompts = list(compose(workload="grounded").workload.prompts)[:4]
for layers in [8, 15, 22, 26, 29]:
    with LLM("smollm2", speculative={"name": "draft", "num_layers": layers, "num_speculative_tokens": 4},
             kv_cache={"memory_budget_gb": 0.2}) as llm:
        llm.generate([llm.chat_prompt(p) for p in prompts], SamplingParams(temperature=0, max_tokens=48), use_tqdm=False)
        d = llm.engine.stats.spec_decode.as_dict()
        print(f"| {layers} | {d['draft_acceptance_rate']:.3f} | {d['mean_acceptance_length']:.2f} | "
              f"{', '.join(f'{x:.2f}' for x in d['acceptance_rate_per_pos'])} |", flush=True)
