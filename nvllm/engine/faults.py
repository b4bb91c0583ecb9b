"""A step whose model run raises: find the requests that caused it and end only those.

When a step raises for a batch, each of its sequences runs again on its own, as a plan of one. One
that raises alone ends with finish_reason "error" (its blocks freed, the exception in its last
delta's `error`; with n > 1 its request's other completions end with it); every other keeps the
token its own run produced, so the step completes for it as if nothing had happened: a greedy token
is the argmax of the same model, and a seeded request draws its noise once (a sampler must raise
before it draws anyone's noise for that to hold, as the default sampler's checks do). A fault no
request causes alone (every solo run passes) costs nothing but the retries. Nothing of the step was
committed before the raise — the scheduler updates a plan only with its result — so no token,
computed count or prefix-cache entry changed, and K/V written for the step is written again, which
is what makes the retry safe. With async_scheduling the step in flight is updated first, so each
solo run reads its input tokens from the host.

Under tp > 1 the ranks are mid-step when rank 0 raises and cannot be re-synchronised: the engine
stops instead (LLMEngine._fail), and a request's data never gets that far, since intake checks every
value (SamplingParams.__post_init__, intake.new_sequence)."""
import logging
from typing import Callable

from nvllm.step import Executor, StepPlan, StepResult

logger = logging.getLogger(__name__)


def isolate(executor: Executor, plan: StepPlan, error: Exception,
            abort: Callable[..., None]) -> tuple[StepPlan, StepResult]:
    """`plan`'s sequences run one at a time: the plan of those that ran and their result. Each one
    that raises alone ends its request through `abort(request_id, error=...)`."""
    logger.warning("nvllm: a step of %d requests raised %s: %s; running each alone to find the cause",
                   len(plan.seqs), type(error).__name__, error)
    ran = {}
    for i, seq in enumerate(plan.seqs):
        if seq.is_finished:  # a sibling completion (n > 1) already failed: its request has ended
            continue
        try:
            ran[i] = executor.execute(plan.subset([i]))
        except Exception as e:
            logger.warning("nvllm: request %s ended with an error: %s: %s", seq.request_id, type(e).__name__, e)
            abort(seq.request_id, error=f"the engine failed on this request: {type(e).__name__}: {e}")
    rows = [i for i in ran if not plan.seqs[i].is_finished]  # a later sibling's failure ended it
    logprobs = [ran[i].logprobs[0] if ran[i].logprobs else None for i in rows]
    return plan.subset(rows), StepResult([ran[i].tokens[0] for i in rows],
                                         logprobs if any(lp is not None for lp in logprobs) else None)
