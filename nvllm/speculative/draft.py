"""speculative=draft: a smaller model of the target's tokenizer drafts num_speculative_tokens
tokens, one forward pass each, greedily.

By default (`speculative.model` null) the smaller model is the target's own first `num_layers`
decoder layers followed by its final norm and LM head (self-speculative decoding, an early exit as
in LayerSkip and Draft & Verify): no second set of weights and no cache of its own, since the
draft's keys and values for those layers are exactly the target's. A draft step writes them into
the reserved slots of the target's cache; the verify step then recomputes those positions through
every layer, so the cache holds the target's values either way.

With `speculative.model` a model directory of the same vocabulary, that model drafts, on rank 0
(tp=1), with a KV cache of its own: as many blocks as the target's, indexed by the same block
tables, so a sequence's positions sit in the same slots in both. It catches up lazily: before
drafting for a sequence it runs the tokens its cache does not hold yet (the prompt, tokens a step
without drafts added, the token after accepted drafts) through the draft model, and it starts again
from nothing after a preemption. Its cache holds the draft model's keys and values only for a
sequence's own tokens, so the bookkeeping is one number per sequence: the positions its cache
holds, which after a verify step is the smaller of what it wrote and what the target accepted."""
import inspect
import json
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from nvllm import registry
from nvllm.hookspecs import hookimpl
from nvllm.sequence import Sequence
from nvllm.speculative.base import Drafter, SpeculativeConfig, refuse


class DraftModelDrafter(Drafter):
    """A draft model proposes tokens one at a time: the target's own first num_layers layers, or speculative.model."""

    name = "draft"

    @dataclass
    class Config(SpeculativeConfig):
        name: str = "draft"
        # the draft model: null = the target's own first num_layers layers (self-speculative, no
        # extra weights or cache); a model directory of the target's vocabulary (tp=1; its own cache)
        model: Optional[str] = None
        # decoder layers the draft runs before the final norm and LM head: of the target (model
        # null; null = a quarter of them), or of speculative.model (null = all of them)
        num_layers: Optional[int] = None

        def __post_init__(self):
            super().__post_init__()
            if self.num_layers is not None and (isinstance(self.num_layers, bool) or self.num_layers < 1):
                raise refuse("num_layers", self.num_layers, "the draft runs at least 1 layer (null: the default)")

    @classmethod
    def check(cls, config, hf_config, target) -> None:
        arch, layers = target.model, hf_config.num_hidden_layers
        if config.model is not None:
            draft_config = Path(config.model).expanduser() / "config.json"
            if not draft_config.is_file():
                raise refuse("model", config.model, "no config.json there; a draft model is a Hugging Face model "
                                                    "directory (or null: the target's own first layers)")
            draft = json.loads(draft_config.read_text())
            if draft.get("vocab_size") != hf_config.vocab_size:
                raise refuse("model", config.model, f"its vocabulary has {draft.get('vocab_size')} tokens and the "
                                                    f"target's {hf_config.vocab_size}: a draft model must share the "
                                                    f"target's tokenizer")
            if target.tp != 1:
                raise refuse("model", config.model, f"a draft model of its own runs unsharded on rank 0, and this run "
                                                    f"has tp={target.tp}; use tp=1, or speculative.model=null (the "
                                                    f"target's first layers draft, on every rank)")
            arch = next((registry.get("model", n) for n in registry.names("model")
                         if draft.get("model_type") in registry.get("model", n).hf_model_types), None)
            if arch is None:
                raise refuse("model", config.model, f"no registered architecture runs its model_type "
                                                    f"{draft.get('model_type')!r}")
            layers = draft.get("num_hidden_layers")
        if config.num_layers is None:
            return
        if "num_layers" not in inspect.signature(arch.forward).parameters:
            raise refuse("num_layers", config.num_layers, f"model={arch.name} cannot run its first layers alone (its "
                                                          f"forward takes no num_layers); leave speculative.num_layers "
                                                          f"null" + ("" if config.model else " and set speculative.model"))
        if config.num_layers > layers:
            raise refuse("num_layers", config.num_layers, f"the {'draft model' if config.model else 'target'} has "
                                                          f"{layers} layers")

    def __init__(self, config, runner):
        super().__init__(config, runner)
        if config.model is None:
            self.draft_runner = runner
            self.num_layers = config.num_layers or max(1, runner.hf_config.num_hidden_layers // 4)
        else:
            self.draft_runner = runner.for_draft_model(config.model)
            self.num_layers = config.num_layers  # None: every layer of the draft model
        # speculative.model: per sequence, (its preemptions, positions the draft model's cache holds)
        self.cached: weakref.WeakKeyDictionary[Sequence, tuple[int, int]] = weakref.WeakKeyDictionary()

    def propose(self, seqs: list[Sequence], slots: list[int]) -> list[list[int]]:
        if self.draft_runner is not self.runner:
            self._catch_up(seqs)
        drafts: list[list[int]] = [[] for _ in seqs]
        for j in range(max(slots)):
            batch = [b for b, n in enumerate(slots) if j < n]
            # position len-1 (the last token, not yet in the cache) first, then each draft after it
            inputs = [([drafts[b][-1] if j else seqs[b].last_token], len(seqs[b]) - 1 + j, seqs[b].block_table)
                      for b in batch]
            logits = self.draft_runner.run_inputs(inputs, num_layers=self.num_layers)
            for b, token_id in zip(batch, logits.argmax(dim=-1).tolist()):
                drafts[b].append(token_id)
        if self.draft_runner is not self.runner:  # what the draft steps wrote: len-1 .. len-2+k
            for seq, tokens in zip(seqs, drafts):
                self.cached[seq] = (seq.num_preemptions, len(seq) - 1 + len(tokens))
        return drafts

    def _catch_up(self, seqs: list[Sequence]):
        """Run each sequence's tokens but its last that the draft model's cache lacks through it."""
        inputs = []
        for seq in seqs:
            preemptions, held = self.cached.get(seq, (seq.num_preemptions, 0))
            # the target accepted what it computed; a preemption took the blocks (and their contents) away
            start = min(held, seq.num_computed_tokens) if preemptions == seq.num_preemptions else 0
            if start < len(seq) - 1:
                inputs.append((seq.token_ids[start:len(seq) - 1], start, seq.block_table))
        if inputs:
            self.draft_runner.run_inputs(inputs)

    def close(self):
        if self.draft_runner is not self.runner:
            self.draft_runner.close()
        self.draft_runner = None


@hookimpl
def register_drafters(register):
    register(DraftModelDrafter)
