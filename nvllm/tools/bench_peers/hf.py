"""The Hugging Face transformers peer: `model.generate`, greedy, float32, batched with left padding.

`generate` runs a static batch: every row decodes until the batch's longest `max_new_tokens`.
With per-request output lengths that is wasted work, so requests are sorted by output length
(longest first) before being cut into batches, which keeps rows of a batch close in length; a
user with an offline batch can do the same. Each request is credited only with its own
`max_tokens` tokens (`output_tokens`); `computed_tokens` counts every row-step generate ran,
padding included. No EOS stop (eos_token_id=None), the counterpart of nvllm's ignore_eos.
"""
import time

import torch


class _Clock:
    """A generate() streamer that only notes when each step's tokens arrive (single request)."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def run(spec: dict) -> dict:
    from transformers import AutoModelForCausalLM

    from nvllm.models.weights import smollm2_path

    prompts, max_tokens = spec["prompts"], spec["max_tokens"]
    batch_size = spec.get("options", {}).get("batch_size", len(prompts))
    torch.set_num_threads(spec["threads"])
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype=torch.float32).eval()
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    _generate(model, [[1, 2, 3], [4, 5]], 4, pad)  # warm-up
    load_s = time.perf_counter() - start

    order = sorted(range(len(prompts)), key=lambda i: -max_tokens[i])
    tokens = [None] * len(prompts)
    computed = 0
    clock = _Clock() if len(prompts) == 1 else None
    start = time.perf_counter()
    for b in range(0, len(order), batch_size):
        rows = order[b:b + batch_size]
        new = max(max_tokens[i] for i in rows)
        generated = _generate(model, [prompts[i] for i in rows], new, pad, clock)
        computed += len(rows) * new
        for i, row in zip(rows, generated):
            tokens[i] = row[:max_tokens[i]]
    wall = time.perf_counter() - start
    output_tokens = sum(len(t) for t in tokens)
    result = dict(output_tokens=output_tokens, computed_tokens=computed, wall_s=wall, tok_s=output_tokens / wall,
                  load_s=load_s, tokens=tokens[:spec["check"]],
                  settings=dict(batch_size=batch_size, sorted_by_output_len=True, padding="left",
                                threads=spec["threads"], transformers=_version()))
    if clock is not None and len(clock.times) > 2:
        # times[0]: the prompt handed in, times[1]: first token, then one per decode step
        result["ttft_s"] = clock.times[1] - start
        result["decode_tok_s"] = (len(clock.times) - 2) / (clock.times[-1] - clock.times[1])
    return result


def _generate(model, prompts: list[list[int]], max_new_tokens: int, pad: int, streamer=None) -> list[list[int]]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, min_new_tokens=None,
                             do_sample=False, eos_token_id=None, pad_token_id=pad, streamer=streamer,
                             temperature=None, top_p=None, top_k=None)
    return out[:, width:].tolist()


def _version() -> str:
    import transformers

    return transformers.__version__
