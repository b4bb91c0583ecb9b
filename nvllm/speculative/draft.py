"""speculative=draft: a smaller model of the target's tokenizer drafts num_speculative_tokens
tokens, one forward pass each, greedily. The smaller model here is the target's own first
`num_layers` decoder layers followed by its final norm and LM head (self-speculative decoding, an
early exit as in LayerSkip and Draft & Verify): no second set of weights, and no KV cache of its
own, since the draft's keys and values for those layers are exactly the target's. A draft step
writes them into the reserved slots of the target's cache; the verify step then recomputes those
positions for every layer, so the cache holds the target's values either way.

What that costs and gains depends on how often the early exit agrees with the whole model: a
draft token costs about num_layers / num_hidden_layers of a decode step plus the LM head."""
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from nvllm.hookspecs import hookimpl
from nvllm.sequence import Sequence
from nvllm.speculative.base import Drafter, SpeculativeConfig, refuse


class DraftModelDrafter(Drafter):
    """A draft model proposes tokens one at a time: the target's own first num_layers layers (self-speculative)."""

    name = "draft"

    @dataclass
    class Config(SpeculativeConfig):
        name: str = "draft"
        # the draft model: null = the target's own first num_layers layers (self-speculative, no
        # extra weights or cache); a model directory must share the target's vocabulary
        model: Optional[str] = None
        # decoder layers of the target the draft runs before the final norm and LM head
        num_layers: int = 8

        def __post_init__(self):
            super().__post_init__()
            if isinstance(self.num_layers, bool) or self.num_layers < 1:
                raise refuse("num_layers", self.num_layers, "the draft runs at least 1 layer of the target")

    @classmethod
    def check(cls, config, hf_config, target) -> None:
        if config.model is not None:
            draft_config = Path(config.model).expanduser() / "config.json"
            if not draft_config.is_file():
                raise refuse("model", config.model, "no config.json there; a draft model is a Hugging Face model "
                                                    "directory (or null: the target's own first layers)")
            vocab = json.loads(draft_config.read_text()).get("vocab_size")
            if vocab != hf_config.vocab_size:
                raise refuse("model", config.model, f"its vocabulary has {vocab} tokens and the target's "
                                                    f"{hf_config.vocab_size}: a draft model must share the target's "
                                                    f"tokenizer")
            raise refuse("model", config.model, "a draft model of its own is not supported; leave speculative.model "
                                                "null to draft with the target's first speculative.num_layers layers")
        if "num_layers" not in inspect.signature(target.model.forward).parameters:
            raise refuse("num_layers", config.num_layers, f"model={target.model.name} cannot run its first layers "
                                                          f"alone (its forward takes no num_layers); use speculative=ngram")
        if config.num_layers > hf_config.num_hidden_layers:
            raise refuse("num_layers", config.num_layers, f"the target has {hf_config.num_hidden_layers} layers")

    def propose(self, seqs: list[Sequence]) -> list[list[int]]:
        drafts: list[list[int]] = [[] for _ in seqs]
        for j in range(max(seq.num_lookahead_tokens for seq in seqs)):
            batch = [b for b, seq in enumerate(seqs) if j < seq.num_lookahead_tokens]
            # position len-1 (the last token, not yet in the cache) first, then each draft after it
            inputs = [([drafts[b][-1] if j else seqs[b].last_token], len(seqs[b]) - 1 + j, seqs[b].block_table)
                      for b in batch]
            logits = self.runner.execute(inputs, num_layers=self.config.num_layers)
            for b, token_id in zip(batch, logits.argmax(dim=-1).tolist()):
                drafts[b].append(token_id)
        return drafts


@hookimpl
def register_drafters(register):
    register(DraftModelDrafter)
