"""The offline driver behind `LLM.generate`: run a list of prompts through an engine's
add_request / step loop to completion, with a progress bar, and hand back one RequestOutput per
prompt in prompt order. Open-loop runs (arrival times, a concurrency cap) go through here too."""
from tqdm.auto import tqdm

from nvllm.distributed.workers import WorkerError
from nvllm.engine.outputs import CompletionOutput, RequestOutput, fill_output
from nvllm.sampling_params import SamplingParams
from nvllm.sequence import Sequence


def generate(engine, prompts: list, sampling_params: list[SamplingParams], use_tqdm: bool = True,
             priorities: list[int] | None = None, arrival_times: list[float] | None = None,
             max_concurrency: int | None = None) -> list[RequestOutput]:
    """Run every prompt to completion on `engine` (an LLMEngine); outputs come back in prompt
    order. A prompt that is rejected gets an output with `error` set; the others run as if it was
    never sent. `priorities` (one per prompt, smaller first) matter to priority-aware schedulers.
    `arrival_times` (seconds after the call, one per prompt, in order) make it open-loop; with
    `max_concurrency` a request arrives no earlier than a slot is free (as vLLM's client). A
    worker that dies ends the run: what finished is kept, the rest carry the error. Any other
    exception (Ctrl-C included) reaches the caller once this call's requests are aborted, so the
    engine is idle and usable again."""
    check_idle(engine)
    priorities = [0] * len(prompts) if priorities is None else priorities
    outputs = [RequestOutput(str(i), prompt if isinstance(prompt, str) else None, []) for i, prompt in enumerate(prompts)]
    pending = list(range(len(prompts)))[::-1]  # popped from the end: prompt order
    live: dict[str, dict[int, tuple[list[str], list]]] = {}  # request id -> completion -> (text pieces, logprobs)
    seqs: dict[str, list[Sequence]] = {}  # request id -> its completions' Sequences
    start = engine.clock.now()

    def admit():
        while pending and (max_concurrency is None or len(live) < max_concurrency):
            i = pending.pop()
            arrival = None if arrival_times is None else max(start + arrival_times[i], engine.clock.now())
            try:
                seq = engine.add_request(str(i), prompts[i], sampling_params[i], arrival, priorities[i], stream=False)
            except ValueError as e:
                outputs[i].end("rejected", str(e))
            else:  # its n as checked (the caller's SamplingParams may have changed since)
                n = seq.sampling_params.n
                outputs[i].prompt_token_ids, outputs[i].outputs = seq.token_ids[:], [CompletionOutput(k) for k in range(n)]
                live[str(i)] = {k: ([], []) for k in range(n)}
                seqs[str(i)] = engine.sequences(str(i))

    try:
        return _run(engine, outputs, pending, live, seqs, admit, use_tqdm, start)
    finally:
        engine.abort_requests(list(live), quiet=True)  # none on a normal return


def _run(engine, outputs: list[RequestOutput], pending: list[int], live: dict, seqs: dict, admit,
         use_tqdm: bool, start: float) -> list[RequestOutput]:
    admit()
    stats = engine.stats
    simulated = engine.clock.simulated  # forward=simulated: the bar shows simulated time and rates
    with tqdm(total=len(live) + len(pending), desc="Simulating" if simulated else "Generating", dynamic_ncols=True,
              disable=not use_tqdm or not live) as bar:  # closed on Ctrl-C too
        while live:
            prefill_before, decode_before = stats.prefill_tokens, stats.decode_tokens
            step_start = engine.clock.now()
            try:
                deltas = engine.step()
            except WorkerError as e:
                for i in [*map(int, live), *pending]:
                    outputs[i].end("abort", str(e))
                break
            now = engine.clock.now()
            elapsed, sim = now - step_start, f"simulated {now - start:.1f} s, " if simulated else ""
            if stats.prefill_tokens > prefill_before:
                bar.set_postfix_str(f"{sim}prefill {(stats.prefill_tokens - prefill_before) / elapsed:.0f} tok/s", refresh=False)
            elif stats.decode_tokens > decode_before:
                spec = stats.spec_decode  # speculative decoding: the drafted tokens accepted so far
                accepted = f", drafts accepted {spec.num_accepted_tokens / spec.num_draft_tokens:.0%}" \
                    if spec and spec.num_draft_tokens else ""
                bar.set_postfix_str(f"{sim}decode {(stats.decode_tokens - decode_before) / elapsed:.0f} tok/s{accepted}",
                                    refresh=False)
            for d in deltas:
                pieces, logprobs = live[d.request_id][d.index]
                pieces.append(d.new_text)
                logprobs.extend(d.logprobs or ())
                if d.finish_reason is not None:
                    seq = seqs[d.request_id][d.index]
                    fill_output(outputs[int(d.request_id)], seq, "".join(pieces),
                                logprobs if seq.logprobs is not None else None, d.stop_reason)
                    outputs[int(d.request_id)].error = outputs[int(d.request_id)].error or d.error  # a fault that ended it
                if d.finished:
                    del live[d.request_id], seqs[d.request_id]
                    bar.update(1)
            admit()
    return outputs


def check_idle(engine):
    """Refuse to drive an engine that has requests of someone else's (they would collide with ours)."""
    if engine.has_unfinished_requests():
        n = len(engine._requests) + len(engine._aborted)  # live, or with a last delta step() has not returned
        raise RuntimeError(f"{n} request{' added with add_request is' if n == 1 else 's added with add_request are'} "
                           f"still live on this engine; step them to completion or abort them before generate/stream")
