"""Warm-up before the first request: a short prefill and a decode step through the model runner
(on every tensor-parallel rank), so that torch.compile's compilation and first-call costs (kernel
loading, allocations) are paid at start-up, timed apart, and never counted in a run's throughput.
It writes K/V into the first cache blocks, which no request owns yet (a request's prefill writes
before anything reads them) and samples greedily (no random state moves)."""
from nvllm.sampling_params import SamplingParams
from nvllm.sequence import Sequence, SequenceStatus
from nvllm.step import StepPlan


def warm_up(runner, num_blocks: int, block_size: int, max_model_len: int) -> None:
    """Two steps: a prefill of two short prompts, then a decode of both."""
    prompt_len = max(1, min(16, max_model_len - 1, num_blocks * block_size // 2 - 1))
    blocks = -(-(prompt_len + 1) // block_size)
    if 2 * blocks > num_blocks:
        return  # a cache too small to spare: the first request warms up instead
    seqs = []
    for i in range(2):
        seq = Sequence([0] * prompt_len, SamplingParams(temperature=0), block_size)
        seq.block_table = list(range(i * blocks, (i + 1) * blocks))
        seq.status = SequenceStatus.RUNNING
        seqs.append(seq)
    tokens = runner.execute(StepPlan.of(seqs, [prompt_len] * 2)).tokens
    for seq, token in zip(seqs, tokens):  # what the scheduler's update would do
        seq.num_computed_tokens = prompt_len
        seq.token_ids.append(token)
        seq.num_tokens += 1
    runner.execute(StepPlan.of(seqs, [1] * 2))
    for seq in seqs:
        runner.release(seq)
