"""A step whose model run raises: find the requests that caused it and end only those.

When `model_runner.run` raises for a batch, each of the step's sequences runs again on its own. One
that raises alone ends with finish_reason "error" (its blocks freed, the exception in its last
delta's `error`; with n > 1 its request's other completions end with it); every other keeps the token its own run produced, so the step completes for it as
if nothing had happened: a greedy token is the argmax of the same model, and a seeded request draws
its noise once (a sampler must raise before it draws anyone's noise for that to hold, as the default
sampler's checks do). A fault no request causes alone (every solo run passes) costs nothing but the
retries. Nothing of the step was committed before the raise — postprocess has not run, so no token,
computed count or prefix-cache entry changed, and K/V written for the step is written again — which
is what makes the retry safe.

Under tp > 1 the ranks are mid-step when rank 0 raises and cannot be re-synchronised: the engine
stops instead (LLMEngine._fail), and a request's data never gets that far, since intake checks every
value (SamplingParams.__post_init__, intake.new_sequence)."""
import logging

from nvllm.sequence import Sequence

logger = logging.getLogger(__name__)


def isolate(engine, seqs: list[Sequence], error: Exception) -> tuple[list[Sequence], list[int]]:
    """The step's sequences that run on their own, with their tokens; those that raise alone are
    ended through `engine.abort_request(..., error=...)` (their delta comes with the next step)."""
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
    return [seq for seq, _ in ran], [token for _, token in ran]
