"""What the engine hands back: a RequestDelta for each completion a step advanced or finished (its
new tokens, text and logprobs, stop strings applied), finished requests copied into vLLM's
RequestOutput / CompletionOutput, and the engine's running totals of prefill and decode steps."""
from dataclasses import dataclass, field

from nvllm.engine.detokenizer import Detokenizer
from nvllm.sequence import Sequence, SequenceStatus


@dataclass
class Logprob:
    """One token's log-probability (vLLM's): from the model's raw logits, before penalties,
    temperature or top-k/top-p; `rank` 1 is the most likely token."""
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    """One of a request's `n` completions (vLLM's CompletionOutput)."""
    index: int
    text: str = ""
    # generated tokens only (a stop token, EOS included, is the last of them; its text is not in `text`)
    token_ids: list[int] = field(default_factory=list)
    # the sum of the sampled tokens' logprobs; None unless SamplingParams.logprobs was set
    cumulative_logprob: float | None = None
    # one {token id: Logprob} per generated token: the sampled one and the `logprobs` most likely
    logprobs: list[dict[int, Logprob]] | None = None
    # stop (EOS, stop string or stop token), length (max_tokens), max_model_len (cut by the length
    # cap), abort, rejected (see RequestOutput.error); None while it runs
    finish_reason: str | None = None
    # vLLM's: the stop string or stop_token_ids id that ended it; None for end-of-sequence, length and the rest
    stop_reason: str | int | None = None
    # when each token came out of the model (the engine's clock, seconds)
    token_times: list[float] = field(default_factory=list)

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    """A request's timings in seconds on the engine's clock (vLLM's RequestMetrics, plus TTFT and
    TPOT). With n > 1 the first token and TPOT are the first completion's."""
    arrival_time: float | None = None
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    # first scheduled - arrival
    time_in_queue: float | None = None
    # first token - arrival
    ttft: float | None = None
    # per token after the first
    tpot: float | None = None
    num_preemptions: int = 0


@dataclass
class RequestOutput:
    """What `LLM.generate` returns per prompt (vLLM's shape): the prompt, and `outputs`, one
    CompletionOutput per completion (`SamplingParams.n`)."""
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=lambda: [CompletionOutput(0)])
    finished: bool = False
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    # why the request was rejected (finish_reason "rejected") or ended by a fault ("abort")
    error: str | None = None

    def end(self, reason: str, error: str):
        """Finish every completion not yet finished with `reason`, the request with `error`."""
        for c in self.outputs:
            c.finish_reason = c.finish_reason or reason
        self.finished, self.error = True, error


@dataclass
class RequestDelta:
    """What one step added to one completion of a request; the `new_text` of all its deltas
    joined is that completion's text."""
    request_id: str
    new_token_ids: list[int]
    new_text: str
    # the whole request has finished (every one of its n completions)
    finished: bool
    # this completion's, once it has finished: stop, length, max_model_len, abort, error
    finish_reason: str | None
    num_prompt_tokens: int
    # generated so far by this completion
    num_output_tokens: int
    error: str | None = None
    # which of the request's n completions
    index: int = 0
    # one {token id: Logprob} per new token (SamplingParams.logprobs set), and the running sum
    logprobs: list[dict[int, Logprob]] | None = None
    cumulative_logprob: float | None = None
    # once finished: the stop string or stop_token_ids id that ended it (CompletionOutput.stop_reason)
    stop_reason: str | int | None = None


@dataclass
class LiveRequest:
    """The engine's record of one completion it has taken and not yet finished."""
    seq: Sequence
    detokenizer: Detokenizer
    num_sent: int = 0  # generated tokens already in a delta

    def delta(self, now: float, scheduler) -> RequestDelta:
        """The tokens and text added since the last delta, however many. It only reads the
        sequence: a stop string found in the text is reported to `scheduler.stop`, which finishes
        the completion there ("stop"); the caller frees what a finished one holds and sets
        `finished` once every completion of the request has. Several new tokens (accepted drafts)
        go through the stop strings one at a time: the completion ends at the token that completed
        one, as it would have without speculation, and the tokens after it are dropped."""
        seq, detokenizer, start = self.seq, self.detokenizer, self.num_sent
        new_ids = seq.token_ids[seq.num_prompt_tokens + start:]
        finished = seq.status is SequenceStatus.FINISHED
        # the text of every token not yet decoded (all of them for a non-streamed request, whose one
        # delta comes when it finishes); a stop token's text is left out
        text_ids = new_ids[:-1] if seq.finish_reason == "stop" and new_ids else new_ids
        if detokenizer.stop and len(text_ids) > 1:  # (stop strings make it incremental: text_ids are new_ids)
            text, stopped = "", False
            for i, token_id in enumerate(text_ids):
                piece, stopped = detokenizer.update([token_id], finished and i == len(text_ids) - 1)
                text += piece
                if stopped:
                    new_ids = new_ids[:i + 1]
                    break
        else:
            text, stopped = detokenizer.update(text_ids, finished)
        if stopped:
            scheduler.stop(seq, start + len(new_ids), now)
            finished = True
        self.num_sent += len(new_ids)
        logprobs = seq.logprobs and [self._logprobs(entry) for entry in seq.logprobs[start:start + len(new_ids)]]
        return RequestDelta(seq.request_id, new_ids, text, finished, seq.finish_reason,
                            seq.num_prompt_tokens, seq.num_tokens - seq.num_prompt_tokens, index=seq.index, logprobs=logprobs,
                            cumulative_logprob=seq.cumulative_logprob,
                            stop_reason=stop_reason(seq, detokenizer.stop_string) if finished else None)

    def _logprobs(self, entry: dict[int, tuple[float, int]]) -> dict[int, Logprob]:
        tokenizer = self.detokenizer.tokenizer
        return {t: Logprob(lp, rank, tokenizer.decode([t]) if tokenizer is not None else None)
                for t, (lp, rank) in entry.items()}


def stop_reason(seq: Sequence, stop_string: str | None) -> str | int | None:
    """vLLM's stop_reason of a finished completion: the stop string that ended it, else the
    stop_token_ids id it ended on; None when it ended otherwise (end-of-sequence included)."""
    if seq.finish_reason != "stop":
        return None
    if stop_string is not None:
        return stop_string
    last = seq.token_ids[-1] if seq.num_completion_tokens else None
    return last if last in (seq.sampling_params.stop_token_ids or ()) else None


def fill_output(out: RequestOutput, seq: Sequence, text: str, logprobs: list | None, stop_reason: str | int | None = None):
    """Copy a finished completion's tokens, text, finish reason, logprobs and timings into `out`."""
    c = out.outputs[seq.index]
    c.token_ids, c.finish_reason, c.text, c.token_times = seq.completion_token_ids, seq.finish_reason, text, seq.token_times
    c.stop_reason = stop_reason
    c.logprobs, c.cumulative_logprob = logprobs, seq.cumulative_logprob
    m = out.metrics
    m.num_preemptions += seq.num_preemptions
    m.finished_time = max(m.finished_time or seq.finish_time, seq.finish_time)
    if seq.index == 0:
        m.arrival_time, m.first_scheduled_time = seq.arrival_time, seq.first_scheduled_time
        if seq.first_scheduled_time is not None:
            m.time_in_queue = seq.first_scheduled_time - seq.arrival_time
        if seq.token_times:
            m.first_token_time, m.last_token_time = seq.token_times[0], seq.token_times[-1]
            m.ttft = seq.token_times[0] - seq.arrival_time
        if len(seq.token_times) > 1:
            m.tpot = (seq.token_times[-1] - seq.token_times[0]) / (len(seq.token_times) - 1)
    out.finished = all(c.finished() for c in out.outputs)


@dataclass
class SpecDecodingStats:
    """Speculative decoding's counters, vLLM's (`vllm:spec_decode_*`): a draft is one sequence's
    drafted tokens in one step; an accepted token is a drafted one the target agreed with (the
    token the target adds after them is not counted)."""
    # most tokens drafted per sequence and step (speculative.num_speculative_tokens)
    num_spec_tokens: int
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    # [num_spec_tokens]: drafts whose token at that position was accepted
    num_accepted_tokens_per_pos: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.num_accepted_tokens_per_pos = self.num_accepted_tokens_per_pos or [0] * self.num_spec_tokens

    def record(self, plan, result) -> None:
        """One step: each sequence's drafts (a StepPlan's) and the run the verification kept (its StepResult's)."""
        for drafts, run in zip(plan.drafts, result.tokens):
            if drafts and run is not None:
                accepted = len(run) - 1
                self.num_drafts += 1
                self.num_draft_tokens += len(drafts)
                self.num_accepted_tokens += accepted
                for pos in range(accepted):
                    self.num_accepted_tokens_per_pos[pos] += 1

    def as_dict(self) -> dict:
        """The counters, and what vLLM derives from them: draft_acceptance_rate = accepted / drafted
        tokens, mean_acceptance_length = 1 + accepted / drafts (tokens a draft gave, the target's
        own included), acceptance_rate_per_pos = accepted at that position / drafts."""
        drafts = self.num_drafts
        return {
            "num_spec_tokens": self.num_spec_tokens, "num_drafts": drafts, "num_draft_tokens": self.num_draft_tokens,
            "num_accepted_tokens": self.num_accepted_tokens,
            "num_accepted_tokens_per_pos": list(self.num_accepted_tokens_per_pos),
            "draft_acceptance_rate": self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else None,
            "mean_acceptance_length": 1 + self.num_accepted_tokens / drafts if drafts else None,
            "acceptance_rate_per_pos": [n / drafts for n in self.num_accepted_tokens_per_pos] if drafts else None,
        }


@dataclass
class StepStats:
    """Tokens and seconds of the engine's steps so far: a step where every sequence decodes (one
    token, and its drafts if any) counts as decode, with the tokens it generated; any other (a
    mixed one too) as prefill, with the tokens it computed."""
    prefill_tokens: int = 0
    prefill_time: float = 0.0
    decode_tokens: int = 0
    decode_time: float = 0.0
    steps: int = 0
    # speculative decoding's counters (None: speculative=none)
    spec_decode: SpecDecodingStats | None = None

    # when the last step's result was applied (the engine's clock)
    last_applied: float = float("-inf")

    def record(self, plan, result, update, now: float):
        """One step's records, applied at `now`. Its time runs from its launch, or from when the
        step before it was applied if later (overlap); a decode step counts the tokens it generated
        (a verify step computes more than it keeps), any other the tokens it computed."""
        if plan.drafts and self.spec_decode is not None:
            self.spec_decode.record(plan, result)
        seconds, self.last_applied, self.steps = now - max(plan.launched, self.last_applied), now, self.steps + 1
        if plan.is_decode:
            self.decode_tokens, self.decode_time = self.decode_tokens + sum(update.num_new), self.decode_time + seconds
        else:
            self.prefill_tokens, self.prefill_time = self.prefill_tokens + plan.total_tokens, self.prefill_time + seconds
