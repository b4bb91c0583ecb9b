"""The streaming engine API: deltas joined equal generate's tokens and text for every scheduler,
abort frees every block, stop strings and stop token ids (offline and streaming), open-loop
arrivals, and exact incremental detokenisation with the real SmolLM2 tokenizer."""
import time

import pytest

from nvllm import LLM, LLMEngine, SamplingParams
from nvllm.engine.detokenizer import Detokenizer

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
BASE = dict(kv_cache={"block_size": 8, "num_blocks": 40}, max_model_len=128, max_num_batched_tokens=256)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> str:
    """A tiny random llama with the SmolLM2 tokenizer: its greedy tokens are arbitrary ids of the real
    vocabulary (byte-fallback pieces, CJK, emoji parts), a hard case for incremental detokenisation."""
    from nvllm.models.weights import smollm2_path
    from nvllm.tools.checkpoint import make_random_checkpoint

    return make_random_checkpoint("llama", str(tmp_path_factory.mktemp("tiny-llama-text")), preset="tiny",
                                  vocab_size=49152, tokenizer_from=str(smollm2_path()), seed=3)


@pytest.fixture(scope="module")
def llm(text_model):
    with LLM(text_model, **BASE) as llm:
        yield llm


@pytest.fixture(scope="module")
def smol():
    """The real SmolLM2: real text, so stop strings have words to straddle."""
    with LLM("smollm2", kv_cache={"block_size": 16, "num_blocks": 64}, max_model_len=256, max_num_batched_tokens=512) as llm:
        yield llm


def chat(llm, messages):
    return [llm.chat_prompt(m) for m in messages]


QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "Say hello in Japanese and add an emoji.",
             "Name three primary colors."]
PROMPTS = ["Hello, world! 你好，世界 🌍", "The capital of France is", [5, 6, 7, 8, 9, 10, 11] * 3, "🍣 sushi and 🍜 ramen:"]


def run_stream(llm, prompts, params):
    tokens, texts, reasons = {}, {}, {}
    for d in llm.stream(prompts, params):
        assert (d.finish_reason is None) == (not d.finished)
        tokens.setdefault(d.request_id, []).extend(d.new_token_ids)
        texts[d.request_id] = texts.get(d.request_id, "") + d.new_text
        assert d.num_output_tokens == len(tokens[d.request_id])
        if d.finished:
            reasons[d.request_id] = d.finish_reason
    ids = [str(i) for i in range(len(prompts))]
    return [tokens[i] for i in ids], [texts[i] for i in ids], [reasons[i] for i in ids]


@pytest.mark.parametrize("scheduler", ["fcfs", "chunked", "priority"])
def test_stream_equals_generate_for_every_scheduler(text_model, scheduler):
    with LLM(text_model, scheduler=scheduler, **BASE) as llm:
        outs = [o.outputs[0] for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
        tokens, texts, reasons = run_stream(llm, PROMPTS, GREEDY)
        assert tokens == [o.token_ids for o in outs]
        assert texts == [o.text for o in outs]
        assert all(len(t) == 24 for t in tokens) and reasons == ["length"] * len(PROMPTS)
        for o in outs:  # the joined pieces are the whole decode, byte for byte
            assert o.text == llm.tokenizer.decode(o.token_ids, skip_special_tokens=True)
        assert llm.engine.kv_cache.num_free_blocks == llm.engine.kv_cache.num_blocks


def test_abort_frees_every_block(llm):
    engine: LLMEngine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    for i in range(3):
        engine.add_request(f"r{i}", [i + 1] * 20, params)
    engine.add_request("late", [9] * 5, params, arrival_time=time.perf_counter() + 60)
    deltas = engine.step() + engine.step()
    assert {d.request_id for d in deltas} == {"r0", "r1", "r2"}
    free, held = engine.kv_cache.num_free_blocks, len(engine.sequences("r1")[0].block_table)
    assert held == 3  # 20 prompt tokens + 2 generated, 8 a block
    engine.abort_request("r1")
    assert engine.kv_cache.num_free_blocks == free + held  # at once
    engine.abort_request("late")  # not yet arrived
    engine.abort_request("no such id")  # ignored
    engine.abort_request("r1")  # already aborted: ignored
    aborted = [d for d in engine.step() if d.finished]
    assert sorted((d.request_id, d.finish_reason) for d in aborted) == [("late", "abort"), ("r1", "abort")]
    finished = {}
    while engine.has_unfinished_requests():
        finished |= {d.request_id: d for d in engine.step() if d.finished}
    assert set(finished) == {"r0", "r2"} and all(d.finish_reason == "length" for d in finished.values())
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks
    assert not engine.scheduler.running and not engine.scheduler.waiting


def test_leaving_a_stream_early_aborts_the_rest(llm):
    for d in llm.stream(PROMPTS, GREEDY):
        break
    assert not llm.engine.has_unfinished_requests()
    assert llm.engine.kv_cache.num_free_blocks == llm.engine.kv_cache.num_blocks


def test_duplicate_request_id_refused(llm):
    engine = llm.engine
    engine.add_request("dup", [1, 2, 3], GREEDY)
    with pytest.raises(ValueError, match="request id 'dup' is already running"):
        engine.add_request("dup", [4, 5], GREEDY)
    engine.abort_request("dup")
    engine.step()
    assert not engine.has_unfinished_requests()


def test_stop_strings_offline_and_streaming(smol):
    llm, prompts = smol, chat(smol, QUESTIONS)
    full = [o.outputs[0] for o in llm.generate(prompts, GREEDY, use_tqdm=False)]
    stops, want = [], []
    for o in full:
        # a stop string from the middle of the text, straddling a token boundary where it can
        pieces = [llm.tokenizer.decode(o.token_ids[:k], skip_special_tokens=True) for k in range(len(o.token_ids))]
        k = next(k for k in range(6, len(pieces)) if len(pieces[k]) >= 2 and "\ufffd" not in pieces[k]
                 and len(o.text) > len(pieces[k]))
        stop = o.text[len(pieces[k]) - 1:len(pieces[k]) + 1]  # the last character of token k-1 and the next one
        stops.append(stop)
        want.append(o.text[:o.text.index(stop)])
    params = [SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=["never appears 🙃", s]) for s in stops]
    offline = [o.outputs[0] for o in llm.generate(prompts, params, use_tqdm=False)]
    assert [o.text for o in offline] == want
    assert all(o.finish_reason == "stop" and len(o.token_ids) < 24 for o in offline)
    for o, f in zip(offline, full):
        assert o.token_ids == f.token_ids[:len(o.token_ids)]
    tokens, texts, reasons = run_stream(llm, prompts, params)
    assert texts == want and tokens == [o.token_ids for o in offline] and reasons == ["stop"] * len(prompts)
    assert llm.engine.kv_cache.num_free_blocks == llm.engine.kv_cache.num_blocks


def test_stop_token_ids_offline_and_streaming(smol):
    llm, prompts = smol, chat(smol, QUESTIONS)
    full = [o.outputs[0] for o in llm.generate(prompts, GREEDY, use_tqdm=False)]
    stop_ids = [o.token_ids[5] for o in full]
    params = [SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop_token_ids=[t]) for t in stop_ids]
    offline = [o.outputs[0] for o in llm.generate(prompts, params, use_tqdm=False)]
    for o, f, t in zip(offline, full, stop_ids):
        n = f.token_ids.index(t) + 1
        assert o.token_ids == f.token_ids[:n] and o.finish_reason == "stop"
        assert o.text == llm.tokenizer.decode(o.token_ids[:-1], skip_special_tokens=True)  # the stop token's text left out
    tokens, texts, reasons = run_stream(llm, prompts, params)
    assert tokens == [o.token_ids for o in offline] and texts == [o.text for o in offline]
    assert reasons == ["stop"] * len(prompts)


def test_real_text_streams_exactly(smol):
    """SmolLM2's own answers (CJK, emoji where it writes them), sampled with seeds for variety."""
    prompts = chat(smol, QUESTIONS + ["Translate 'good morning' into Chinese, Korean and Greek.",
                                      "Reply with only emoji: 🍣🍜🌍"])
    params = [SamplingParams(temperature=0.8, seed=i, max_tokens=40) for i in range(len(prompts))]
    outs = [o.outputs[0] for o in smol.generate(prompts, params, use_tqdm=False)]
    tokens, texts, _ = run_stream(smol, prompts, params)
    assert tokens == [o.token_ids for o in outs] and texts == [o.text for o in outs]
    for o in outs:
        assert o.text == smol.tokenizer.decode(o.token_ids, skip_special_tokens=True)
    assert any(ord(c) > 0x2E80 for o in outs for c in o.text), "no CJK or emoji in the answers to test with"


def test_max_model_len_is_its_own_finish_reason(text_model):
    with LLM(text_model, kv_cache={"block_size": 8, "num_blocks": 8}, max_model_len=20, max_num_batched_tokens=64) as llm:
        out = [o.outputs[0] for o in llm.generate([[1, 2, 3] * 4, [4, 5]], [
            SamplingParams(temperature=0, max_tokens=30, ignore_eos=True),
            SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)], use_tqdm=False)]
        assert (out[0].finish_reason, len(out[0].token_ids)) == ("max_model_len", 8)
        assert (out[1].finish_reason, len(out[1].token_ids)) == ("length", 3)
        with pytest.raises(ValueError, match="prompt 0: empty prompt"):
            llm.generate([[]], GREEDY, use_tqdm=False)
        with pytest.raises(ValueError, match="prompt 1: empty prompt"):
            llm.stream([[1, 2], []], SamplingParams(temperature=0, max_tokens=2))


def test_open_loop_arrivals_keep_the_tokens(llm):
    prompts = PROMPTS[:3]
    closed = llm.generate(prompts, GREEDY, use_tqdm=False)
    at_zero = llm.generate(prompts, GREEDY, use_tqdm=False, arrival_times=[0.0] * 3)
    opened = llm.generate(prompts, GREEDY, use_tqdm=False, arrival_times=[0.0, 0.3, 0.6])
    capped = llm.generate(prompts, GREEDY, use_tqdm=False, arrival_times=[0.0] * 3, max_concurrency=1)
    for outs in (at_zero, opened, capped):
        assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in closed]
        assert [o.outputs[0].text for o in outs] == [o.outputs[0].text for o in closed]
    start = opened[0].metrics.arrival_time
    for o, offset in zip(opened, [0.0, 0.3, 0.6]):
        m = o.metrics
        assert m.arrival_time == pytest.approx(start + offset, abs=1e-3)  # the first arrives "now", just after the start
        assert m.first_scheduled_time >= m.arrival_time  # admitted at its time, not before
        assert m.ttft == pytest.approx(o.outputs[0].token_times[0] - m.arrival_time)
    # one at a time: each arrives when the previous has finished
    for a, b in zip(capped, capped[1:]):
        assert b.metrics.arrival_time >= a.metrics.finished_time


# -- the detokenizer alone, with the real SmolLM2 tokenizer ---------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from nvllm.models.weights import smollm2_path

    return AutoTokenizer.from_pretrained(str(smollm2_path()))


TEXTS = ["Hello 👋🏽 world — naïve café, 日本語のテキスト, 한국어, Ελληνικά, 🧑‍🚀🚀 emoji", "数学 = 𝔐𝔞𝔱𝔥 ∑∫ 🙂🙃",
         "  leading spaces and\nnew lines\t tabs"]


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_pieces_join_to_the_decode(tokenizer, text):
    ids = tokenizer.encode(text)
    assert text == TEXTS[2] or any(len(tokenizer.decode([t])) == 1 and tokenizer.decode([t]) == "\ufffd" for t in ids), \
        "the text should need byte-level pieces that only decode with their neighbours"
    detok = Detokenizer(tokenizer)
    pieces = [detok.update([t], finished=i == len(ids) - 1)[0] for i, t in enumerate(ids)]
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True) == text
    assert not any("\ufffd" in p for p in pieces)


def test_special_tokens_are_skipped(tokenizer):
    ids = tokenizer.encode("Hi there") + [tokenizer.eos_token_id] + tokenizer.encode(" 🌍 again")
    detok = Detokenizer(tokenizer)
    pieces = [detok.update([t], False)[0] for t in ids] + [detok.update([], True)[0]]
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)


def test_arbitrary_ids_join_to_the_decode(tokenizer):
    import random

    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randint(1, 40))]
        detok = Detokenizer(tokenizer)
        pieces = [detok.update([t], i == len(ids) - 1)[0] for i, t in enumerate(ids)]
        assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)


def test_stop_string_held_back_while_it_may_match(tokenizer):
    text = "The answer: 日本 is here. END of text"
    ids = tokenizer.encode(text)
    detok = Detokenizer(tokenizer, stop=["本 is", "END"])
    sent, stopped_at = "", None
    for i, t in enumerate(ids):
        piece, stopped = detok.update([t], False)
        sent += piece
        assert "本 is" not in sent and not sent.endswith("本")  # never shown before we know
        if stopped:
            stopped_at = i
            break
    assert sent == "The answer: 日" and stopped_at is not None


def test_a_request_that_is_not_streamed_gives_one_delta_when_it_finishes(llm):
    """stream=False (generate's, vLLM's final-only output): no delta while it runs, then one per
    completion with all its tokens and text, equal to what a streamed request's deltas add up to;
    a streamed request beside it gets a delta every step."""
    engine, params = llm.engine, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, n=2, logprobs=1)
    engine.add_request("final", [5, 6, 7, 8], params, stream=False)
    engine.add_request("streamed", [5, 6, 7, 8], params)
    final, streamed = [], {0: [], 1: []}
    while engine.has_unfinished_requests():
        for d in engine.step():
            if d.request_id == "final":
                assert d.finish_reason == "length", "a delta of a request that is not streamed before it finished"
                final.append(d)
            else:
                streamed[d.index].append(d)
    assert sorted(d.index for d in final) == [0, 1] and final[-1].finished
    for d in final:
        assert d.new_token_ids == [t for s in streamed[d.index] for t in s.new_token_ids] and len(d.new_token_ids) == 12
        assert d.new_text == "".join(s.new_text for s in streamed[d.index])
        assert len(d.logprobs) == 12
    assert all(len(s) > 1 for s in streamed.values())
