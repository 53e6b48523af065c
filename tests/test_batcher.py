"""Continuous batching (llmkit/serving/batcher.py): a request gives the text `llmkit generate`
gives for the same prompt, seed and settings, alone or batched with requests that join and leave
while it runs; the queue limit and cancellation free what they should."""

from __future__ import annotations

import queue
import threading

import pytest
import torch

from llmkit.config import ModelConfig
from llmkit.data.tokenizer import CharTokenizer
from llmkit.inference.generation import Generation, GenerationSettings
from llmkit.inference.sampling import Sampling
from llmkit.models import build_model
from llmkit.serving.batcher import Batcher, Done, Failed, QueueFull, Request, Text

CHARS = "abcdefghijklmnopqrstuvwxyz .,\n"
PROMPTS = ["the cat", "a", "once upon a time there was", "hello, world. how are you", "zzz\n"]


def char_model(name: str = "gpt", block_size: int = 64):
    torch.manual_seed(0)
    config = ModelConfig(name=name, vocab_size=len(CHARS), block_size=block_size, n_layer=2, n_head=4,
                         n_kv_head=2 if name == "gpt" else None, n_embd=32, positions="rope" if name == "gpt" else "learned")
    model = build_model(config).eval()
    with torch.no_grad():  # weights big enough that every token of the context moves the logits
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model, CharTokenizer(CHARS)


@pytest.fixture(scope="module")
def gpt():
    return char_model()


def alone(model, tokenizer, prompt: str, max_tokens: int, sampling: Sampling, seed: int, n: int = 1, stops=()):
    settings = GenerationSettings(max_tokens, sampling, tuple(stops), n, context="stop")
    return [(c.text, c.stop_reason, c.tokens) for c in Generation(model, tokenizer, prompt, settings, seed).run()]


def request(tokenizer, prompt: str, max_tokens: int, sampling: Sampling, seed: int, n: int = 1, stops=()):
    return Request(tuple(tokenizer.encode(prompt).tolist()), max_tokens, sampling, tuple(stops), n, seed)


def idle(batcher: Batcher, timeout: float = 10.0) -> bool:
    """Whether the batch empties (rows and cache gone) within `timeout`: a job's Done event is
    sent before its rows leave, at the end of the step."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if batcher.load()["rows"] == batcher.load()["waiting"] == 0 and batcher._cache is None:
            return True
        time.sleep(0.01)
    return False


def served(batcher: Batcher, req: Request):
    return [(c.text, c.stop_reason, c.tokens) for c in batcher.complete(req)]


def collect(q: queue.SimpleQueue, n: int) -> list[tuple]:
    """A job's events until Done, as (text, reason, tokens) per choice."""
    texts, finished = [""] * n, {}
    while not isinstance(event := q.get(timeout=30), Done):
        assert not isinstance(event, Failed), event
        if isinstance(event, Text):
            texts[event.choice] += event.text
        else:
            finished[event.choice] = (event.reason, event.tokens)
    return [(t, *finished[c]) for c, t in enumerate(texts)]


SETTINGS = [Sampling(temperature=0), Sampling(temperature=1.0, top_k=None), Sampling(0.9, 5, top_p=0.8),
            Sampling(0.7, None, min_p=0.1, repetition_penalty=1.5)]


@pytest.mark.parametrize("sampling", SETTINGS, ids=["greedy", "t1", "topk-topp", "minp-penalty"])
def test_a_request_alone_gives_what_generate_gives(gpt, sampling):
    model, tokenizer = gpt
    batcher = Batcher(model, tokenizer, max_batch=4)
    try:
        for seed, prompt in enumerate(PROMPTS[:3]):
            for n in (1, 3):
                want = alone(model, tokenizer, prompt, 20, sampling, seed, n, stops=("e ",))
                assert served(batcher, request(tokenizer, prompt, 20, sampling, seed, n, stops=("e ",))) == want
    finally:
        batcher.stop()


@pytest.mark.parametrize("name", ["gpt", "multi_head_attention"], ids=["cached", "uncached"])
def test_requests_that_join_and_leave_a_running_batch_get_what_they_get_alone(name):
    """Five requests of different lengths: two start together, the rest join once the first have
    made a few tokens; short ones leave while long ones go on. Each is what it is alone."""
    model, tokenizer = char_model(name)
    sampling = Sampling(temperature=1.0, top_k=None)
    lengths = [30, 5, 24, 12, 40 if name == "gpt" else 30]
    wants = [alone(model, tokenizer, p, m, sampling, seed=10 + i) for i, (p, m) in enumerate(zip(PROMPTS, lengths))]
    batcher = Batcher(model, tokenizer, max_batch=8)
    events = [queue.SimpleQueue() for _ in PROMPTS]
    try:
        def submit(i):
            batcher.submit(request(tokenizer, PROMPTS[i], lengths[i], sampling, seed=10 + i), events[i].put)

        submit(0), submit(1)
        texts = [[] for _ in PROMPTS]
        for _ in range(4):  # wait until request 0 is well under way, then the others join
            texts[0].append(events[0].get(timeout=30))
        for i in range(2, len(PROMPTS)):
            submit(i)
        got = []
        for i, q in enumerate(events):
            while not isinstance(event := q.get(timeout=30), Done):
                assert not isinstance(event, Failed), event
                texts[i].append(event)
            text = "".join(e.text for e in texts[i] if isinstance(e, Text))
            finished = [e for e in texts[i] if not isinstance(e, Text)]
            got.append((text, finished[0].reason, finished[0].tokens))
        assert got == [w[0] for w in wants]
        assert idle(batcher)  # every row left, and its keys and values with it
    finally:
        batcher.stop()


@pytest.mark.parametrize("name", ["gpt", "multi_head_attention"], ids=["cached", "uncached"])
def test_requests_that_arrive_together_run_their_prompts_together_and_get_what_they_get_alone(name):
    """Requests queued in the same step are admitted at once: their prompts (lengths 1 to 26,
    n of 1 and 2, mixed settings) run as one left-padded batch, and each gets what it gets alone."""
    model, tokenizer = char_model(name)
    asked = [(p, SETTINGS[i % len(SETTINGS)], 1 + i % 2) for i, p in enumerate(PROMPTS)]
    wants = [alone(model, tokenizer, p, 15, s, 20 + i, n) for i, (p, s, n) in enumerate(asked)]
    batcher = Batcher(model, tokenizer, max_batch=16)
    events = [queue.SimpleQueue() for _ in asked]
    try:
        with batcher._lock:  # the batcher's thread waits for the lock: it takes all of them in one step
            for i, (p, s, n) in enumerate(asked):
                batcher.submit(request(tokenizer, p, 15, s, 20 + i, n), events[i].put)
        for i, q in enumerate(events):
            assert collect(q, asked[i][2]) == wants[i]
        assert idle(batcher)
    finally:
        batcher.stop()


@pytest.mark.parametrize("budget_mb", [1, 0], ids=["prompt-cache", "none"])
def test_prompts_that_start_as_earlier_ones_did_reuse_their_keys_and_values_and_get_what_they_get_alone(budget_mb):
    """Two prompts are served and kept; then six arrive together: one each kept prompt starts
    with, one longer than a kept one, one sharing part of one, an exact repeat with n = 2, and two
    that share nothing. Their rows copy different numbers of columns at different paddings, and each
    gets what it gets alone; with no cache, the same and nothing reused."""
    model, tokenizer = char_model()
    sampling = Sampling(0.9, None, top_p=0.9)
    first = ["once upon a time there was", "hello, world. how are you"]
    asked = [("once upon a time", 1), ("once upon a time there was a cat", 1), ("once upon a dog", 1),
             ("hello, world. how are you", 2), ("zzz\n", 1), ("a", 1)]
    batcher = Batcher(model, tokenizer, max_batch=16, prompt_cache_mb=budget_mb)
    try:
        for i, p in enumerate(first):
            assert served(batcher, request(tokenizer, p, 12, sampling, i)) == alone(model, tokenizer, p, 12, sampling, i)
        assert batcher.prompts.reused == 0 and len(batcher.prompts) == (2 if budget_mb else 0)
        events = [queue.SimpleQueue() for _ in asked]
        with batcher._lock:  # taken in one step: one group, its rows at different paddings
            for i, (p, n) in enumerate(asked):
                batcher.submit(request(tokenizer, p, 12, sampling, 30 + i, n), events[i].put)
        for i, (p, n) in enumerate(asked):
            assert collect(events[i], n) == alone(model, tokenizer, p, 12, sampling, 30 + i, n), p
        # In separate groups by length, rows that know their prompt's start copy it
        assert (batcher.prompts.reused > 0) == bool(budget_mb)
        assert idle(batcher)
    finally:
        batcher.stop()


def test_a_conversations_next_turn_reuses_the_last_turns_prompt_and_answer(gpt):
    """The second turn sends the first turn's prompt and answer back, then more: all of the
    first turn but the answer's last token (sampled, never fed) is copied, not computed, and the
    second answer is what it is alone."""
    model, tokenizer = gpt
    sampling = Sampling(0.9, None)
    batcher = Batcher(model, tokenizer, max_batch=4)
    try:
        first = "once upon a time"
        answer = served(batcher, request(tokenizer, first, 10, sampling, 1))[0][0]
        assert len(answer) == 10  # a char model: one character per token, no end-of-text
        second = first + answer + " and then"
        reused = batcher.prompts.reused
        got = served(batcher, request(tokenizer, second, 10, sampling, 2))
        assert got == alone(model, tokenizer, second, 10, sampling, 2)
        assert batcher.prompts.reused - reused == len(first) + len(answer) - 1
        assert batcher.prompts.holds(tuple(tokenizer.encode(second + got[0][0][:-1]).tolist()))
    finally:
        batcher.stop()


def test_a_prompt_cache_budget_out_of_range_is_refused(gpt):
    from llmkit.errors import LlmkitError

    model, tokenizer = gpt
    for mb in (-1, (1 << 20) + 1):
        with pytest.raises(LlmkitError, match="--prompt-cache"):
            Batcher(model, tokenizer, prompt_cache_mb=mb)


def test_prompts_are_grouped_by_length_within_the_padding_and_token_bounds():
    from llmkit.serving.batcher import PREFILL_TOKENS, Job, _prefill_groups

    def job(length, n=1):
        return Job(None, Request(tuple(range(length)), 4, n=n), print)

    jobs = [job(40), job(38), job(41), job(400), job(39, n=2), job(3000), job(5)]
    groups = [[(len(j.request.ids), j.request.n) for j in g] for g in _prefill_groups(jobs)]
    assert groups == [[(5, 1)], [(38, 1), (39, 2), (40, 1), (41, 1)], [(400, 1)], [(3000, 1)]]
    for g in _prefill_groups([job(100, n=4) for _ in range(10)]):  # 4 rows x 100 = 400 tokens a job
        assert sum(j.request.n for j in g) * 100 <= PREFILL_TOKENS


def test_the_context_ends_a_request_with_length(gpt):
    model, tokenizer = gpt
    batcher = Batcher(model, tokenizer)
    try:
        prompt = "abc " * 15  # 60 of the 64 positions
        room = batcher.room(60)
        [(text, reason, tokens)] = served(batcher, request(tokenizer, prompt, room, Sampling(temperature=0), 0))
        assert reason == "length" and tokens == room == 5
        [(want, _, _)] = alone(model, tokenizer, prompt, 100, Sampling(temperature=0), 0)
        assert text == want  # generate --context stop ends at the same place
        with pytest.raises(Exception, match="leaves room for 5 new ones"):
            batcher.submit(request(tokenizer, prompt, 6, Sampling(temperature=0), 0), print)
    finally:
        batcher.stop()


def test_a_full_queue_refuses_and_a_cancelled_request_frees_its_rows(gpt):
    model, tokenizer = gpt
    batcher = Batcher(model, tokenizer, max_batch=1, max_queue=1)
    try:
        first, second = queue.SimpleQueue(), queue.SimpleQueue()
        long = request(tokenizer, "a", 60, Sampling(temperature=1.0, top_k=None), 0)
        running = batcher.submit(long, first.put)
        first.get(timeout=30)  # it runs: the batch's one row is taken
        batcher.submit(request(tokenizer, "b", 3, Sampling(temperature=0), 0), second.put)  # waits
        with pytest.raises(QueueFull):
            batcher.submit(request(tokenizer, "c", 3, Sampling(temperature=0), 0), print)
        running.cancel()
        while not isinstance(second.get(timeout=30), Done):  # the waiting one gets the row
            pass
        assert idle(batcher)
    finally:
        batcher.stop()


def test_stopping_tells_every_client(gpt):
    model, tokenizer = gpt
    batcher = Batcher(model, tokenizer, max_batch=1, max_queue=4)
    got = [queue.SimpleQueue() for _ in range(3)]
    started = threading.Event()
    batcher.submit(request(tokenizer, "a", 60, Sampling(temperature=0), 0), lambda e: (started.set(), got[0].put(e)))
    started.wait(30)
    for q in got[1:]:
        batcher.submit(request(tokenizer, "b", 60, Sampling(temperature=0), 0), q.put)
    batcher.stop()
    for q in got:
        events = []
        while not q.empty():
            events.append(q.get())
        assert isinstance(events[-1], Failed) and "shutting down" in events[-1].message
