"""A step whose model run raises: find the requests that caused it and end only those.

When a step's launch or sample raises for a batch, each of the step's sequences runs again on its own. One
that raises alone ends with finish_reason "error" (its blocks freed, the exception in its last
delta's `error`; with n > 1 its request's other completions end with it); every other keeps the token its own run produced, so the step completes for it as
if nothing had happened: a greedy token is the argmax of the same model, and a seeded request draws
its noise once (a sampler must raise before it draws anyone's noise for that to hold, as the default
sampler's checks do). A fault no request causes alone (every solo run passes) costs nothing but the
retries. Nothing of the step was committed before the raise — the scheduler has not advanced it, so
no token, computed count or prefix-cache entry changed, and K/V written for the step is written
again — which is what makes the retry safe. With async_scheduling the step in flight settles first,
so each solo run reads its input tokens from the host, and the retried step settles at once.

Under tp > 1 the ranks are mid-step when rank 0 raises and cannot be re-synchronised: the engine
stops instead (LLMEngine._fail), and a request's data never gets that far, since intake checks every
value (SamplingParams.__post_init__, intake.new_sequence)."""
import logging

from nvllm.engine.overlap import Step
from nvllm.sequence import Sequence

logger = logging.getLogger(__name__)


def isolate(engine, seqs: list[Sequence], error: Exception) -> Step:
    """The step of `seqs` that run on their own, sampled (their tokens a list); those that raise alone
    are ended through `engine.abort_request(..., error=...)` (their delta comes with the next step)."""
    logger.warning("nvllm: a step of %d requests raised %s: %s; running each alone to find the cause",
                   len(seqs), type(error).__name__, error)
    ran = []
    for seq in seqs:
        if seq.is_finished:  # a sibling completion (n > 1) already failed: its request has ended
            continue
        try:
            ran.append((seq, engine.model_runner.run([seq])[0]))
        except Exception as e:
            logger.warning("nvllm: request %s ended with an error: %s: %s", seq.request_id, type(e).__name__, e)
            engine.abort_request(seq.request_id, error=f"the engine failed on this request: {type(e).__name__}: {e}")
    ran = [(seq, token) for seq, token in ran if not seq.is_finished]  # a later sibling's failure ended it
    survivors = [seq for seq, _ in ran]
    num_tokens = sum(seq.num_scheduled_tokens for seq in survivors)
    is_decode = num_tokens == len(survivors) and all(s.num_computed_tokens >= s.num_prompt_tokens for s in survivors)
    return Step(survivors, num_tokens, is_decode, tokens=[token for _, token in ran])
