"""Continuous batching: the requests of many clients decoded together, as one batch of the model.

Decoding one sequence reads every weight of the model for each token (llmkit/inference/layout.py);
decoding eight reads them once for all eight, so on the same machine a batch makes nearly eight
times the tokens per second for a little more time per step. A server wins that only if it puts
concurrent requests in the same batch, and it cannot wait for them all to start or all to end:

    step    1   2   3   4   5   6   7   8
    A       a   a   a   a   -                 A ends at step 4 (its row leaves the batch)
    B           B*  b   b   b   b   b   -     B joins at step 2: its prompt is run (*) on its own,
    C                       C*  c   c   c     then its row joins the others' KV cache

Each step, one thread (this module's `Batcher`) admits waiting requests while the batch has
rows free (`max_batch`), runs the new prompts once (those of similar length together, as one
left-padded batch; each from where the prompt cache's copy of its start ends, when it has one:
llmkit/inference/prompt_cache.py) to fill their own KV cache and choose their first tokens, and
joins that cache to the batch's (`KVCache.gather`: rows right-aligned, shorter ones left-padded
and masked). Then one forward pass over the batch's last tokens gives every row its next token.
Requests whose rows have all ended (end-of-text, a stop string, max_tokens, the context, or a
client that went away) leave between steps; the prompt cache keeps their prompts, and a one-row
request's answer too (a chat client's next turn sends both back).

Each request keeps its own sampling settings and its own random generator, seeded by its seed, and
its `n` rows stay together until the last of them ends; so a request draws exactly the tokens
`llmkit generate` draws for the same prompt, seed and settings, whoever else is in the batch.

The batcher knows nothing of HTTP: it takes `Request`s and reports `Text`, `Finished`, `Done` and
`Failed` events through the callback given with each (llmkit/serving/app.py turns them into the
OpenAI API's chunks).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from llmkit.data.tokenizer import Tokenizer
from llmkit.errors import LlmkitError
from llmkit.heap import return_freed_memory
from llmkit.inference.compiled import compiled, warm_up
from llmkit.inference.decoding import caches, left_padded, new_cache, next_logits
from llmkit.inference.generation import Completion, RowText
from llmkit.inference.layout import prefer_layout
from llmkit.inference.prompt_cache import DEFAULT_MB, PromptCache
from llmkit.inference.sampling import Rows, Sampling, next_tokens
from llmkit.layers.kv_cache import KVCache

GROW = 64  # the batch's KV cache grows by at least this many columns at a time


@dataclass(frozen=True)
class Request:
    ids: tuple[int, ...]  # the prompt's token ids
    max_tokens: int  # at most this many new ids per row
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=1.0, top_k=None))
    stops: tuple[str, ...] = ()
    n: int = 1  # rows (choices) for this prompt
    seed: int = 0


@dataclass(frozen=True)
class Text:
    choice: int
    text: str


@dataclass(frozen=True)
class Finished:
    choice: int
    reason: str  # a stop reason of llmkit/inference/generation.py: eos, stop, length
    tokens: int  # ids generated for this choice, not counting an end-of-text id


@dataclass(frozen=True)
class Done:
    prompt_tokens: int
    completion_tokens: int  # over all choices


@dataclass(frozen=True)
class Failed:
    message: str
    shutdown: bool = False  # the server stopping, not a fault (the API says 503, not 500)


Event = Text | Finished | Done | Failed


class QueueFull(Exception):
    """More requests are waiting than the batcher's `max_queue`."""


class Closed(Exception):
    """The batcher is stopping and takes no new requests."""


class Job:
    """A submitted request: `cancel()` takes it out of the queue or the batch (its client went away)."""

    def __init__(self, batcher: Batcher, request: Request, send: Callable[[Event], None]):
        self.batcher, self.request, self.send = batcher, request, send
        self.cancelled = False

    def cancel(self) -> None:
        self.batcher._cancel(self)


class _Running:
    """A job in the batch: its rows' text, its generator, each row's last id, how many tokens
    each row may still take, and its ids so far as an (n, t) tensor when something reads them
    (a repetition penalty, or a model without a cache that reads its window of them)."""

    def __init__(self, job: Job, rows: list[RowText], generator: torch.Generator, history: torch.Tensor | None,
                 left: int):
        self.job, self.rows, self.generator, self.history, self.left = job, rows, generator, history, left
        self.last: list[int] = []
        self.answer: list[int] = []  # a one-row job's ids so far, for the prompt cache

    @property
    def over(self) -> bool:
        return self.job.cancelled or all(r.done for r in self.rows)


# Once the batch has been empty this long, freed memory goes back to the system (llmkit/heap.py):
# else a burst of requests would leave the server's resident memory at its peak.
IDLE_TRIM_S = 1.0
# The weights' layout (llmkit/inference/layout.py) follows the largest batch of the last this many
# seconds, not every change of the batch's size.
LAYOUT_S = 5.0


# Prompts that arrive together run as one padded batch while the batch's rows x its longest prompt
# stays within this many tokens (a prompt longer than that runs alone), and while padding adds at
# most a quarter to the tokens computed.
PREFILL_TOKENS = 2048


def _prefill_groups(jobs: list[Job]) -> list[list[Job]]:
    """The new jobs in groups whose prompts run as one batch: by length, so that little is padding."""
    groups: list[list[Job]] = []
    rows = tokens = 0
    for job in sorted(jobs, key=lambda j: len(j.request.ids)):
        n, length = job.request.n, len(job.request.ids)
        padded = (rows + n) * length  # sorted: this prompt is the group's longest
        if groups and padded <= PREFILL_TOKENS and padded <= 1.25 * (tokens + n * length):
            groups[-1].append(job)
            rows, tokens = rows + n, tokens + n * length
        else:
            groups.append([job])
            rows, tokens = n, n * length
    return groups


class Batcher:
    """Decodes submitted requests on a thread of its own, `max_batch` rows at a time, with up to
    `max_queue` requests waiting for room."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, max_batch: int = 8, max_queue: int = 64,
                 prompt_cache_mb: int = DEFAULT_MB):
        if not 1 <= max_batch <= 4096 or not 0 <= max_queue <= 1_000_000 or not 0 <= prompt_cache_mb <= 1 << 20:
            raise LlmkitError(f"--max-batch must be 1 to 4096, --max-queue 0 to 1,000,000 and --prompt-cache "
                              f"0 to 1,048,576 MB, got {max_batch}, {max_queue} and {prompt_cache_mb}")
        self.model, self.tokenizer = model, tokenizer
        self.prompts = PromptCache(prompt_cache_mb << 20)  # only the batcher's thread touches it
        self.max_batch, self.max_queue = max_batch, max_queue
        self.block, self.cached = model.config.block_size, caches(model)
        self.end_id = getattr(tokenizer, "eot_id", None)
        self.device = next(model.parameters()).device
        if compiled(model):  # compile now, not at the first requests (one graph for 1 row, one for more)
            warm_up(model)
        self._waiting: deque[Job] = deque()
        self._running: list[_Running] = []
        self._cache: KVCache | None = None
        self._recent_rows: deque[tuple[float, int]] = deque()  # (time, batch size): for the layout
        self._lock = threading.Condition()
        self._stopping = self._closed = False  # closed: no new requests (draining); stopping: the thread ends
        self._thread = threading.Thread(target=self._loop, name="llmkit-batcher", daemon=True)
        self._thread.start()

    # --- the clients' side (any thread) ---

    def room(self, prompt_tokens: int) -> int:
        """How many new tokens a prompt this long can take before the context is full (a model
        without a cache slides its window instead, so any number)."""
        return self.block - prompt_tokens + 1 if self.cached else 1 << 30

    def submit(self, request: Request, send: Callable[[Event], None]) -> Job:
        """Queue a request; its events go to `send`, called on the batcher's thread (it must not
        block). Raises QueueFull when `max_queue` requests already wait, Closed when stopping."""
        if not 1 <= request.n <= self.max_batch:
            raise LlmkitError(f"n must be 1 to {self.max_batch} (the batch's rows), got {request.n}")
        if not request.ids or not 1 <= request.max_tokens <= self.room(len(request.ids)):
            raise LlmkitError(f"a prompt of {len(request.ids)} tokens leaves room for "
                              f"{self.room(len(request.ids))} new ones, not {request.max_tokens}")
        job = Job(self, request, send)
        with self._lock:
            if self._stopping or self._closed:
                raise Closed()
            if len(self._waiting) >= self.max_queue:
                raise QueueFull()
            self._waiting.append(job)
            self._lock.notify_all()
        return job

    def complete(self, request: Request) -> list[Completion]:
        """Submit and wait: the request's choices, done (for Python callers and tests)."""
        import queue

        events: queue.SimpleQueue = queue.SimpleQueue()
        self.submit(request, events.put)
        choices = [Completion("", i) for i in range(request.n)]
        while not isinstance(event := events.get(), Done):
            if isinstance(event, Failed):
                raise LlmkitError(event.message)
            if isinstance(event, Text):
                choices[event.choice].text += event.text
            else:
                choices[event.choice].tokens, choices[event.choice].stop_reason = event.tokens, event.reason
        return choices

    def load(self) -> dict:
        """What the batcher holds now: rows decoding, requests waiting, and the prompt cache's
        prompts, size and prompt tokens copied from it so far (read as the batcher's thread left them)."""
        cache = {"prompts": len(self.prompts), "mb": round(self.prompts.bytes / 2**20, 1), "reused_tokens": self.prompts.reused}
        with self._lock:
            return {"rows": sum(r.job.request.n for r in self._running), "waiting": len(self._waiting), "prompt_cache": cache}

    def drain(self, timeout: float) -> None:
        """Take no new requests; let those queued and running finish for up to `timeout` seconds;
        then stop, telling what is left that the server is shutting down."""
        end = time.monotonic() + timeout
        with self._lock:
            self._closed = True
            while (self._waiting or self._running) and (left := end - time.monotonic()) > 0:
                self._lock.wait(left)
        self.stop()

    def stop(self, timeout: float = 60.0) -> None:
        """Cancel everything and stop the thread, waiting up to `timeout` seconds for its last step
        (the process must not exit while that thread is inside torch)."""
        with self._lock:
            self._stopping = True
            waiting = list(self._waiting)
            self._waiting.clear()
            self._lock.notify_all()
        for job in waiting:
            self._send(job, Failed("the server is shutting down", shutdown=True))
            job.cancelled = True
        self._thread.join(timeout)

    def _cancel(self, job: Job) -> None:
        with self._lock:
            job.cancelled = True
            if job in self._waiting:
                self._waiting.remove(job)

    # --- the batcher's thread ---

    def _loop(self) -> None:
        with torch.no_grad():
            while True:
                with self._lock:
                    idle = self._idle_for(IDLE_TRIM_S)
                    if idle:  # what the requests' HTTP side freed goes back too
                        return_freed_memory()
                        idle = self._idle_for(LAYOUT_S - IDLE_TRIM_S)
                if idle:  # no batch for LAYOUT_S: one row's layout (a packed copy freed); unlocked, as it takes a while
                    self._layout_for(0)
                with self._lock:
                    while not (self._stopping or self._waiting or self._running):
                        self._lock.wait()
                    if self._stopping:
                        break
                    admitted = self._take_waiting()
                try:
                    self._admit(admitted)
                    self._leave()
                    if self._running:
                        self._step()
                        self._leave()
                except Exception as e:  # a fault of the server, not of a request: fail what runs, go on
                    self._fail([*admitted, *(r.job for r in self._running)],
                               f"generation failed: {type(e).__name__}: {str(e)[:300]}")
                with self._lock:
                    if not (self._waiting or self._running):
                        self._lock.notify_all()  # a drain waits for this
        self._fail([r.job for r in self._running], "the server is shutting down", shutdown=True)
        prefer_layout(self.model, 1)  # a packed model back to plain weights, for whoever uses it next

    def _idle_for(self, seconds: float) -> bool:
        """Whether nothing comes to do for `seconds` (under the lock; a wake-up with nothing to do,
        such as a finished client's cancel, does not end the wait). False at once if work waits."""
        end = time.monotonic() + seconds
        while not (self._stopping or self._waiting or self._running):
            if (left := end - time.monotonic()) <= 0:
                return True
            self._lock.wait(left)
        return False

    def _fail(self, jobs: list[Job], message: str, shutdown: bool = False) -> None:
        """Tell each job's client why it ends here, and drop every row (a job told it is done
        already ignores this)."""
        for job in dict.fromkeys(jobs):
            self._send(job, Failed(message, shutdown))
            job.cancelled = True
        self._running, self._cache = [], None

    def _take_waiting(self) -> list[Job]:
        """The waiting jobs that fit in the batch now, first come first served (under the lock)."""
        rows = sum(r.job.request.n for r in self._running)
        admitted = []
        while self._waiting and rows + self._waiting[0].request.n <= self.max_batch:
            job = self._waiting.popleft()
            admitted.append(job)
            rows += job.request.n
        return admitted

    def _admit(self, jobs: list[Job]) -> None:
        """Run the new jobs' prompts (n identical rows each, as `llmkit generate --num-samples n`
        does), choose each row's first token, and join the rows to the batch. With a cache, prompts
        of similar length run as one left-padded batch: a CPU reads the weights once per forward
        pass (SmolLM2 fp32 on one thread, 8 chat prompts of 35-39 tokens: 0.99 s together, 1.64 s
        one by one; int4, whose kernel is bound by arithmetic, 2.06 s and 2.20 s:
        scripts/bench_batcher.py)."""
        jobs = [job for job in jobs if not job.cancelled]
        if not jobs:
            return
        self._layout_for(sum(x.job.request.n for x in self._running) + sum(job.request.n for job in jobs))
        if not self.cached:
            for job in jobs:
                running = self._running_for(job)
                self._take([running], self.model(running.history[:, -self.block :])[:, -1])
                if not running.over:
                    self._running.append(running)
            return
        for group in _prefill_groups(jobs):
            self._prefill(group)

    def _running_for(self, job: Job) -> _Running:
        r = job.request
        keep = not self.cached or r.sampling.repetition_penalty != 1.0  # what reads a row's ids so far
        history = torch.tensor(r.ids, dtype=torch.long, device=self.device).expand(r.n, -1) if keep else None
        rows = [RowText(Completion("", i), self.tokenizer, r.stops, self.end_id) for i in range(r.n)]
        return _Running(job, rows, torch.Generator(self.device).manual_seed(r.seed), history, r.max_tokens)

    def _prefill(self, jobs: list[Job]) -> None:
        """One forward pass over the jobs' prompts, right-aligned (rows left-padded and masked)."""
        ids, pad = left_padded([job.request.ids for job in jobs for _ in range(job.request.n)], self.device)
        need = max(job.request.max_tokens for job in jobs)
        cache = new_cache(self.model, ids.shape[0], ids.shape[1] + min(need - 1, GROW), pad if bool(pad.any()) else None)
        pads = pad.tolist()
        known = self._known(jobs, pads, cache)
        logits = next_logits(self.model, ids[:, known:], cache)  # (rows, V)
        self._remember(jobs, pads, cache)
        joining = [self._running_for(job) for job in jobs]
        self._take(joining, logits)
        staying, kept, row = [], [], 0
        for running in joining:
            n = running.job.request.n
            if not running.over:
                staying.append(running)
                kept.extend(range(row, row + n))
            row += n
        if not staying:
            return
        kept = torch.tensor(kept, device=self.device)
        if not self._running:
            self._cache = None  # a batch that emptied: its cache is no one's
        if self._cache is None:
            self._cache = cache if len(kept) == cache.batch else KVCache.gather([(cache, kept)], self._room(staying))
        else:
            everyone = torch.arange(self._cache.batch, device=self.device)
            self._cache = KVCache.gather([(self._cache, everyone), (cache, kept)], self._room(staying))
        self._running.extend(staying)

    def _known(self, jobs: list[Job], pad: list[int], cache: KVCache) -> int:
        """Copy what the prompt cache holds of the jobs' prompts into their rows of `cache`; return
        how many leading columns are then known in every row (the forward pass runs the rest).
        Row b's prompt starts at column pad[b], so with m of its ids known, its columns up to
        pad[b] + m are; a row that knows more than the others has the surplus computed again."""
        found = [self.prompts.longest(job.request.ids) for job in jobs]  # one search per job, its n rows share it
        hits = [hit for job, hit in zip(jobs, found) for _ in range(job.request.n)]
        start = min(p + m for p, (_, m) in zip(pad, hits))
        if start == 0:
            return 0
        cache.start_known(start, [(b, p, kv[:, :, :, : start - p]) for b, (p, (kv, _)) in enumerate(zip(pad, hits))
                                  if start > p])
        self.prompts.reused += sum(max(0, start - p) for p in pad)
        return start

    def _remember(self, jobs: list[Job], pad: list[int], cache: KVCache) -> None:
        """Keep each job's prompt's keys and values (its first row's) in the prompt cache."""
        if not self.prompts.budget:
            return
        row = 0
        for job in jobs:
            if not self.prompts.holds(job.request.ids):
                self.prompts.add(job.request.ids, cache.row(row, pad[row], pad[row] + len(job.request.ids)))
            row += job.request.n

    def _remember_answers(self) -> None:
        """Keep the prompt and answer of each one-row job that is over in the prompt cache: a chat
        client's next turn sends both back, followed by its new message. The cache holds the
        answer's ids but its last (sampled, never fed); a row holding anything else is skipped."""
        if not self.prompts.budget or self._cache is None:
            return
        pad, row = self._cache.padding().tolist(), 0
        for running in self._running:
            r = running.job.request
            if running.over and r.n == 1:
                ids = r.ids + tuple(running.answer[:-1])
                if self._cache.length - pad[row] == len(ids) and not self.prompts.holds(ids):
                    self.prompts.add(ids, self._cache.row(row, pad[row], self._cache.length))
            row += r.n

    def _step(self) -> None:
        """One forward pass over every row's last token; the rows' next tokens, sampled together."""
        if not self.cached:  # no cache and no key mask in the small rungs: each job alone, its window of the context
            for running in self._running:
                self._take([running], self.model(running.history[:, -self.block :])[:, -1])
            return
        cache = self._cache
        if cache.length == cache.max_len:  # out of columns: a longer cache, the same rows
            cache = self._cache = KVCache.gather([(cache, torch.arange(cache.batch, device=self.device))], self._room())
        last = torch.tensor([[token] for r in self._running for token in r.last], device=self.device)  # (B, 1)
        self._take(self._running, next_logits(self.model, last, cache))  # (B, V) logits

    def _take(self, jobs: list[_Running], logits: torch.Tensor) -> None:
        """Choose the next ids of `jobs`' rows from their (rows, V) logits, each job with its own
        settings and generator, and report the text they make."""
        groups = [Rows(x.job.request.sampling, x.generator, x.job.request.n, x.history) for x in jobs]
        tokens = next_tokens(logits, groups, self.tokenizer.vocab_size)  # (rows, 1)
        ids, row = tokens[:, 0].tolist(), 0
        for running in jobs:
            r = running.job.request
            running.last, row = ids[row : row + r.n], row + r.n
            if r.n == 1:
                running.answer.append(running.last[0])
            if running.history is not None:
                running.history = torch.cat([running.history, tokens[row - r.n : row]], dim=1)
            running.left -= 1
            for i, token in enumerate(running.last):
                text = running.rows[i]
                if text.done:
                    continue
                self._text(running.job, i, text.push(token))
                if text.done or running.left == 0:
                    self._text(running.job, i, text.finish("length"))
                    self._send(running.job, Finished(i, text.completion.stop_reason, text.completion.tokens))
            if all(text.done for text in running.rows):
                self._send(running.job, Done(len(r.ids), sum(text.completion.tokens for text in running.rows)))

    def _leave(self) -> None:
        """Take the jobs that are over out of the batch (and their rows out of the cache)."""
        staying = [r for r in self._running if not r.over]
        if len(staying) == len(self._running):
            return
        self._remember_answers()
        if staying and self._cache is not None:
            rows, row = [], 0
            for running in self._running:
                n = running.job.request.n
                if not running.over:
                    rows.extend(range(row, row + n))
                row += n
            self._running = staying
            self._cache = KVCache.gather([(self._cache, torch.tensor(rows, device=self.device))], self._room())
        self._running = staying
        if not staying:
            self._cache = None
        self._layout_for(sum(r.job.request.n for r in staying))

    def _layout_for(self, rows: int) -> None:
        """The weights' layout for the largest batch of the last LAYOUT_S seconds: each switch
        copies every matrix (540 MB on SmolLM2 in fp32), and with clients coming and going a batch
        going from one row to two and back would switch twice per finished request. (Compiled
        blocks choose their layout themselves, one per graph: llmkit/inference/compiled.py.)"""
        if compiled(self.model):
            return
        now = time.monotonic()
        recent = self._recent_rows
        recent.append((now, max(1, rows)))
        while recent[0][0] < now - LAYOUT_S:
            recent.popleft()
        prefer_layout(self.model, max(n for _, n in recent), packed=True)  # the model is the batcher's alone

    def _room(self, joining: list[_Running] = ()) -> int:
        """Columns to leave free in a new batch cache: what the rows still need, grown in chunks."""
        running = self._running + list(joining)
        need = max(r.left for r in running)
        length = self._cache.length if self._cache is not None else 0
        return min(need, max(GROW, length))

    def _text(self, job: Job, choice: int, text: str) -> None:
        if text:
            self._send(job, Text(choice, text))

    def _send(self, job: Job, event: Event) -> None:
        if job.cancelled:
            return
        try:
            job.send(event)
        except Exception:  # the client's side is gone (its event loop closed): stop its rows
            job.cancelled = True
