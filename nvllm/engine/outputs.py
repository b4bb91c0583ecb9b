"""What the engine hands back: a RequestDelta for each request a step advanced or finished (its
new tokens and text, stop strings applied), a finished request copied into its RequestOutput,
and the engine's running totals of prefill and decode steps."""
from dataclasses import dataclass, field

from nvllm.engine.detokenizer import Detokenizer
from nvllm.sequence import Sequence


@dataclass
class RequestOutput:
    index: int
    prompt: str | None
    prompt_token_ids: list[int]
    # generated tokens only (a stop token, EOS included, is the last of them; its text is not in `text`)
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    # stop (EOS, stop string or stop token), length (max_tokens), max_model_len (cut by the length
    # cap), abort, rejected (see `error`)
    finish_reason: str | None = None
    error: str | None = None
    # seconds from arrival to the first generated token, and per later token
    ttft: float | None = None
    tpot: float | None = None
    # perf_counter() times: arrival, first scheduled, each generated token, finish
    arrival_time: float | None = None
    first_scheduled_time: float | None = None
    token_times: list[float] = field(default_factory=list)
    finish_time: float | None = None
    num_preemptions: int = 0


@dataclass
class RequestDelta:
    """What one step added to one request; the `new_text` of all its deltas joined is its text."""
    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    # None until finished; then stop, length, max_model_len, abort (or rejected, from LLM.stream)
    finish_reason: str | None
    num_prompt_tokens: int
    # generated so far
    num_output_tokens: int
    error: str | None = None


@dataclass
class LiveRequest:
    """The engine's record of a request it has taken and not yet finished."""
    seq: Sequence
    detokenizer: Detokenizer
    num_sent: int = 0  # generated tokens already in a delta

    def delta(self, now: float) -> RequestDelta:
        """The tokens and text added since the last delta, however many. A stop string found in
        the text finishes the request here (finish_reason "stop"); the caller frees what a
        finished request holds."""
        seq = self.seq
        new_ids = seq.token_ids[seq.num_prompt_tokens + self.num_sent:]
        self.num_sent += len(new_ids)
        finished = seq.is_finished
        text_ids = new_ids[:-1] if seq.finish_reason == "stop" and new_ids else new_ids  # a stop token's text is left out
        text, stopped = self.detokenizer.update(text_ids, finished)
        if stopped:
            seq.finish_reason, finished = "stop", True
        if finished:
            seq.finish_time = now
        return RequestDelta(seq.request_id, new_ids, text, finished, seq.finish_reason if finished else None,
                            seq.num_prompt_tokens, seq.num_completion_tokens)


def fill_output(out: RequestOutput, seq: Sequence, text: str):
    """Copy a finished request's tokens, text, finish reason and timings into its output."""
    out.token_ids = seq.completion_token_ids
    out.finish_reason = seq.finish_reason
    out.text = text
    out.arrival_time, out.first_scheduled_time = seq.arrival_time, seq.first_scheduled_time
    out.token_times, out.finish_time, out.num_preemptions = seq.token_times, seq.finish_time, seq.num_preemptions
    if seq.token_times:
        out.ttft = seq.token_times[0] - seq.arrival_time
    if len(seq.token_times) > 1:
        out.tpot = (seq.token_times[-1] - seq.token_times[0]) / (len(seq.token_times) - 1)


@dataclass
class StepStats:
    """Tokens and seconds of the engine's steps so far: a step where every sequence decodes one
    token counts as decode, any other (a mixed one too) as prefill."""
    prefill_tokens: int = 0
    prefill_time: float = 0.0
    decode_tokens: int = 0
    decode_time: float = 0.0
    steps: int = 0

    def record(self, num_tokens: int, seconds: float, decode: bool):
        self.steps += 1
        if decode:
            self.decode_tokens, self.decode_time = self.decode_tokens + num_tokens, self.decode_time + seconds
        else:
            self.prefill_tokens, self.prefill_time = self.prefill_tokens + num_tokens, self.prefill_time + seconds
