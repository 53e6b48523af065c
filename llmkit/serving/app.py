"""`llmkit serve`: a loaded model behind the OpenAI HTTP API, on FastAPI and uvicorn.

    GET  /health                 {"status": "ok", "model": NAME, "rows": ..., "waiting": ..., "prompt_cache": {...}}
    GET  /v1/models              the one model served, by its NAME
    POST /v1/chat/completions    messages -> the model's chat template -> an answer
    POST /v1/completions         a prompt (or several) -> its continuation

Every request becomes batcher requests (llmkit/serving/batcher.py: one per prompt, with its own
seed, sampling and stops), decoded in one batch with everyone else's. Its events come back from
the batcher's thread on an asyncio queue and go out as one JSON reply, or as server-sent events
(`data: {chunk}` lines, then `data: [DONE]`). A client that disconnects cancels its rows.

Bad input is a 4xx in the OpenAI error shape ({"error": {"message", "type", "param", "code"}}),
never a 500: 400 for a body that does not validate or asks for more than the limits, 401 for a
wrong API key, 404 for another model's name or an unknown path, 413 for a body over --max-body,
429 when --max-queue requests already wait. A 500 is a fault of the server.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Header
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from llmkit.console import say
from llmkit.errors import LlmkitError
from llmkit.serving.batcher import Batcher, Closed, Done, Failed, Finished, QueueFull, Request, Text
from llmkit.serving.protocol import FINISH, ChatBody, CompletionBody, Reply, error, usage


@dataclass(frozen=True)
class Limits:
    max_prompt_tokens: int = 2048
    max_tokens: int = 1024  # per choice; also the default when a request gives none (or the room left)
    max_body: int = 1 << 20  # bytes
    shutdown_s: float = 10.0  # on SIGTERM / Ctrl-C, running requests get this long to finish
    stream_interval_s: float = 0.02  # a stream's text goes out at most this often (Mailbox)

    def __post_init__(self) -> None:
        if not (1 <= self.max_prompt_tokens < 2**31 and 1 <= self.max_tokens < 2**31 and 1 <= self.max_body <= 1 << 30
                and 0 <= self.shutdown_s <= 3600 and 0 <= self.stream_interval_s <= 1):
            raise LlmkitError("--max-prompt-tokens and --max-tokens must be at least 1, --max-body 1 byte to "
                              "1 GiB, --shutdown-timeout 0 to 3600 seconds, --stream-interval 0 to 1000 ms")


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def name_and_key(name: str | None, model: str, api_key: str | None, host: str) -> tuple[str, str | None]:
    """The model's name in the API (default: MODEL's last path part) and the API key (default:
    $LLMKIT_API_KEY), checked before the model is loaded; a warning when `host` lets other
    machines in and no key is asked."""
    api_key = api_key if api_key is not None else os.environ.get("LLMKIT_API_KEY") or None
    if api_key is not None and (not api_key.isprintable() or " " in api_key or len(api_key) > 1000):
        raise LlmkitError("--api-key must be printable, without spaces, at most 1000 characters")
    served = name if name is not None else os.path.basename(os.path.normpath(str(model))).removesuffix(".gguf")
    if not served or len(served) > 200 or not served.isprintable():
        raise LlmkitError("--name must be 1 to 200 printable characters")
    if host not in LOOPBACK and api_key is None:
        say(f"warning: listening on {host} without --api-key: anyone who can reach it can use the model")
    return served, api_key


def model_threads(threads: int | None) -> int:
    """Set (and return) the CPU threads that run the model's math: `threads`, or else all cores but
    one. A server's Python (the event loop's HTTP, JSON and streams, and the batcher's own
    bookkeeping) runs on one core at a time; PyTorch's threads spin between operations, so a
    thread on every core takes that core from it. On 2 cores, one thread served more
    tokens/s to 8 clients of a char model than two (docs/serving.md).
    $OMP_NUM_THREADS, when set, is the user's choice and is kept."""
    import torch

    if threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return torch.get_num_threads()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, min(torch.get_num_threads(), cores - 1))
    torch.set_num_threads(threads)
    return threads


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.body = status, error(message, kind, code, param)


class Mailbox:
    """Events from the batcher's thread to the event loop, handed over in batches. Each hand-over
    wakes the loop (a write to its self-pipe, a read, a pass of the loop), and the text it brings
    becomes one chunk per stream, which its client parses too. For a fast model that costs more
    than the token itself, so text waits until `interval` seconds have passed since the last
    hand-over, and each stream then sends what came meanwhile as one chunk (a char model serving
    one client 700 tokens/s: some 14 tokens a chunk at 20 ms). What a client should not wait for
    goes at once, with everything that waits: a request's first text (time to first token) and
    every end. A model slower than `interval` per step is not held back at all."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = 0.0):
        self.loop, self.interval = loop, interval
        self._items, self._lock = [], threading.Lock()
        self._soon = self._timer = False  # a hand-over is scheduled at once / after a wait
        self._last = float("-inf")  # when the last hand-over that brought something ran

    def post(self, queue: asyncio.Queue, item, urgent: bool = True) -> None:
        """Put `item` on `queue` from another thread: now if `urgent` or the interval has passed,
        else once it has (raises RuntimeError once the loop is closed)."""
        with self._lock:
            self._items.append((queue, item))
            wait = 0.0 if urgent else self._last + self.interval - time.monotonic()
            if self._soon or (wait > 0 and self._timer):
                schedule = None  # a hand-over due by then will take this too
            elif wait <= 0:
                schedule, self._soon = "soon", True
            else:
                schedule, self._timer = "timer", True
        if schedule == "soon":
            self.loop.call_soon_threadsafe(self._hand_over, False)
        elif schedule == "timer":
            self.loop.call_soon_threadsafe(self.loop.call_later, wait, self._hand_over, True)
        elif self.loop.is_closed():
            raise RuntimeError("the event loop is closed")

    def _hand_over(self, timer: bool) -> None:
        with self._lock:
            items, self._items = self._items, []
            if timer:
                self._timer = False
            else:
                self._soon = False
            if items:
                self._last = time.monotonic()
        for queue, item in items:
            queue.put_nowait(item)


class Jobs:
    """The batcher jobs of one HTTP request (one per prompt), their events on one asyncio queue,
    each event's choice numbered across prompts (prompt p, sample s is choice p * n + s)."""

    def __init__(self, batcher: Batcher, requests: list[Request], mailbox: Mailbox):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.jobs, self.n = [], requests[0].n
        self.prompt_tokens = self.completion_tokens = 0
        try:
            for index, request in enumerate(requests):
                self.jobs.append(batcher.submit(request, self._sender(mailbox, index)))
        except QueueFull:
            self.cancel()
            raise ApiError(429, f"the server is busy: {batcher.max_queue} requests are waiting; try again shortly",
                           "rate_limit_exceeded", "queue_full") from None
        except Closed:
            self.cancel()
            raise ApiError(503, "the server is shutting down", "server_error", "shutting_down") from None
        except LlmkitError as e:
            self.cancel()
            raise ApiError(400, e.message) from None

    def _sender(self, mailbox: Mailbox, index: int) -> Callable:
        first = True

        def send(event) -> None:  # on the batcher's thread
            nonlocal first
            mailbox.post(self.queue, (index, event), urgent=first or not isinstance(event, Text))
            first = False
        return send

    async def events(self, gone: Callable | None = None) -> AsyncIterator[Text | Finished]:
        """Text and Finished events until every job is done; Done adds to the usage. `gone`
        (an async () -> bool) is asked every second whether the client disconnected. Pieces of
        text that are already waiting for the same choice go out as one: when the server falls
        behind (many rows, a fast model), a chunk carries several tokens instead of each token
        paying for its own event."""
        left = len(self.jobs)
        while left:
            if gone is None:  # a stream: a client that leaves cancels it (_stream)
                waiting = [await self.queue.get()]
            else:
                try:
                    waiting = [await asyncio.wait_for(self.queue.get(), timeout=1.0)]
                except TimeoutError:
                    if await gone():
                        self.cancel()
                        return
                    continue
            while not self.queue.empty():
                waiting.append(self.queue.get_nowait())
            text: Text | None = None  # text held back, to be joined by the next piece of its choice
            for index, event in waiting:
                if isinstance(event, Failed):
                    if event.shutdown:
                        raise ApiError(503, event.message, "server_error", "shutting_down")
                    raise ApiError(500, event.message, "server_error")
                if isinstance(event, Done):
                    left -= 1
                    self.prompt_tokens += event.prompt_tokens
                    self.completion_tokens += event.completion_tokens
                    continue
                choice = index * self.n + event.choice
                if isinstance(event, Text) and text is not None and text.choice == choice:
                    text = Text(choice, text.text + event.text)
                    continue
                if text is not None:
                    yield text
                    text = None
                if isinstance(event, Text):
                    text = Text(choice, event.text)
                else:
                    yield Finished(choice, event.reason, event.tokens)
            if text is not None:
                yield text

    def usage(self) -> dict:
        return usage(self.prompt_tokens, self.completion_tokens)

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancel()


class Server:
    """What the endpoints need: the model and its name, the batcher, the limits, the key."""

    def __init__(self, lm, name: str, batcher: Batcher, limits: Limits, api_key: str | None):
        self.lm, self.name, self.batcher, self.limits, self.api_key = lm, name, batcher, limits, api_key
        self._mailbox: Mailbox | None = None

    def mailbox(self) -> Mailbox:
        """The running event loop's mailbox (one loop serves, but tests start several)."""
        loop = asyncio.get_running_loop()
        if self._mailbox is None or self._mailbox.loop is not loop:
            self._mailbox = Mailbox(loop, self.limits.stream_interval_s)
        return self._mailbox

    def check_key(self, authorization: str | None) -> None:
        if self.api_key is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "a wrong or missing API key (send it as 'Authorization: Bearer KEY')",
                           code="invalid_api_key")

    def chat_prompt(self, body: ChatBody) -> str:
        from llmkit.inference.chat import chat_template_of, render, special_tokens

        tokenizer = self.lm.tokenizer
        try:
            template = chat_template_of(tokenizer, f"the model '{self.name}'")
        except LlmkitError as e:
            raise ApiError(400, f"{e.message}: continue text with POST /v1/completions instead",
                           param="messages") from None
        try:
            return render(template, [m.as_dict() for m in body.messages], True, **special_tokens(tokenizer))
        except LlmkitError as e:
            raise ApiError(400, e.message, param="messages") from None

    def requests(self, body: ChatBody | CompletionBody, prompts: list[str]) -> list[Request]:
        """Each prompt as a batcher request, its numbers checked against the limits and the context."""
        from llmkit.inference.decoding import prompt_ids
        from llmkit.inference.sampling import Sampling

        if body.model != self.name:
            raise ApiError(404, f"the model '{body.model[:100]}' is not served here; this server has '{self.name}'",
                           code="model_not_found", param="model")
        if (field := body.unsupported()) is not None:
            raise ApiError(400, f"'{field}' is not supported by llmkit serve", code="unsupported_parameter", param=field)
        if body.n > self.batcher.max_batch:
            raise ApiError(400, f"n must be at most {self.batcher.max_batch} (the server's --max-batch)", param="n")
        try:
            sampling = Sampling(1.0 if body.temperature is None else body.temperature, body.top_k, body.top_p,
                                body.min_p, body.repetition_penalty or 1.0)
        except LlmkitError as e:
            raise ApiError(400, e.message) from None
        seed = body.seed if body.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        wanted = getattr(body, "max_completion_tokens", None) or body.max_tokens
        requests = []
        for index, text in enumerate(prompts):
            try:
                ids = prompt_ids(self.lm.tokenizer, text)[0].tolist()
            except LlmkitError as e:
                raise ApiError(400, e.message, param="messages" if isinstance(body, ChatBody) else "prompt") from None
            max_tokens = self._max_tokens(len(ids), wanted)
            requests.append(Request(tuple(ids), max_tokens, sampling, tuple(body.stop or ()), body.n, (seed + index) % 2**63))
        return requests

    def _max_tokens(self, prompt_tokens: int, wanted: int | None) -> int:
        limits, room = self.limits, self.batcher.room(prompt_tokens)
        context = self.lm.config.block_size
        if prompt_tokens > limits.max_prompt_tokens or room < 1:
            raise ApiError(400, f"the prompt is {prompt_tokens} tokens; this server takes at most "
                           f"{min(limits.max_prompt_tokens, context)} (the model's context is {context})",
                           code="context_length_exceeded")
        if wanted is None:
            return min(limits.max_tokens, room)
        if wanted > limits.max_tokens:
            raise ApiError(400, f"max_tokens must be at most {limits.max_tokens} (the server's --max-tokens)",
                           param="max_tokens")
        if wanted > room:
            raise ApiError(400, f"the model's context is {context} tokens: a prompt of {prompt_tokens} leaves room "
                           f"for {room} new ones, not {wanted}", code="context_length_exceeded", param="max_tokens")
        return wanted


def make_app(server: Server):
    """The FastAPI application over `server`."""
    app = FastAPI(title="llmkit", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, limit=server.limits.max_body)

    _answer_errors(app)

    async def key(authorization: str | None = Header(None)) -> None:
        server.check_key(authorization)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": server.name, **server.batcher.load()}

    @app.get("/v1/models", dependencies=[Depends(key)])
    async def models():
        return {"object": "list", "data": [{"id": server.name, "object": "model", "created": 0, "owned_by": "llmkit"}]}

    async def answer(http: HttpRequest, body, prompts: list[str], chat: bool):
        requests = await _off_the_loop(http, server.requests, body, prompts)
        jobs = Jobs(server.batcher, requests, server.mailbox())
        reply = Reply(server.name, chat)
        choices = len(prompts) * body.n
        if body.stream:
            include = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(_stream(jobs, reply, choices, include), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            texts, finishes = [""] * choices, [None] * choices
            async for event in jobs.events(http.is_disconnected):
                if isinstance(event, Text):
                    texts[event.choice] += event.text
                else:
                    finishes[event.choice] = FINISH[event.reason]
            return JSONResponse(reply.whole(texts, finishes, jobs.usage()))
        finally:
            jobs.cancel()

    @app.post("/v1/chat/completions", dependencies=[Depends(key)])
    async def chat_completions(body: ChatBody, http: HttpRequest):
        prompt = await _off_the_loop(http, server.chat_prompt, body)
        return await answer(http, body, [prompt], chat=True)

    @app.post("/v1/completions", dependencies=[Depends(key)])
    async def completions(body: CompletionBody, http: HttpRequest):
        return await answer(http, body, body.prompt, chat=False)

    return app


# A request body up to this size is rendered and tokenized on the event loop itself (well under
# a millisecond); a larger one in a worker thread, so that a long prompt does not hold up every
# stream. The hop to a thread and back costs more than the work for short prompts: 15% of the
# server's time per request, when 8 clients asked for one token each.
INLINE_BODY = 16 * 1024


async def _off_the_loop(http: HttpRequest, work: Callable, *args):
    declared = http.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) <= INLINE_BODY:
        return work(*args)
    return await run_in_threadpool(work, *args)


def _answer_errors(app) -> None:
    """Every error as the OpenAI error shape, with the status a client can act on."""

    @app.exception_handler(ApiError)
    async def _api_error(_, e: ApiError):
        return JSONResponse(e.body, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, e: RequestValidationError):
        first = e.errors()[0]
        if first.get("type") == "json_invalid":
            return JSONResponse(error(f"the body is not JSON: {first.get('ctx', {}).get('error', '')}"[:500]),
                                status_code=400)
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return JSONResponse(error(message[:500], param=where or None), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(_, e: HTTPException):
        messages = {404: "no such endpoint: the API is under /v1 (GET /v1/models, POST /v1/chat/completions, "
                         "POST /v1/completions)", 405: "this endpoint does not take that method"}
        return JSONResponse(error(messages.get(e.status_code, str(e.detail))), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _fault(_, e: Exception):  # a bug of the server: log it, say what, keep serving
        logging.getLogger("uvicorn.error").error("internal error", exc_info=e)
        return JSONResponse(error(f"internal error: {type(e).__name__}", "server_error"), status_code=500)


async def _stream(jobs: Jobs, reply: Reply, choices: int, include_usage: bool) -> AsyncIterator[str]:
    """The reply as server-sent events. A disconnect cancels this generator: `finally` then takes
    the request's rows out of the batch."""
    import json

    def sse(data: dict) -> str:
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    try:
        if reply.chat:
            for index in range(choices):
                yield sse(reply.chunk(index, role=True))
        async for event in jobs.events():
            if isinstance(event, Text):
                yield sse(reply.chunk(event.choice, text=event.text))
            else:
                yield sse(reply.chunk(event.choice, finish=FINISH[event.reason]))
        if include_usage:
            yield sse(reply.usage_chunk(jobs.usage()))
        yield "data: [DONE]\n\n"
    except ApiError as e:  # the batcher failed mid-stream: the status is sent already, so say it in the stream
        yield sse(e.body)
    finally:
        jobs.cancel()


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is a 413, whether it says its length
    (Content-Length) or not (chunked). The body is read here, then handed on as it came."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        chunks, size, first = [], 0, None
        while True:
            message = await receive()
            if message["type"] != "http.request":
                first = message  # the client left before sending it all
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                return await self._refuse(scope, receive, send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        first = first or {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return first
            return await receive()  # then what the client sends next (its disconnect)

        return await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        response = JSONResponse(error(f"the request body is over {self.limit:,} bytes (the server's --max-body)",
                                      code="request_too_large"), status_code=413)
        await response(scope, receive, send)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one); an OS error is a message."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
        return sock
    except (OSError, UnicodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise LlmkitError(f"cannot listen on {host}:{port}: {reason}",
                          hint="another server may hold the port: pick another with --port (0 takes any free one)") from None


def run(server: Server, host: str, port: int, announce: Callable[[str], None]) -> None:
    """Serve until SIGTERM or Ctrl-C, then stop taking connections, give running requests
    `limits.shutdown_s` seconds, cancel what is left, and return."""
    import uvicorn

    sock = listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://{'[' + bound_host + ']' if ':' in bound_host else bound_host}:{bound_port}/v1"

    class _Uvicorn(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                announce(url)

        async def shutdown(self, sockets=None):
            # Running requests get shutdown_s to finish; then the batcher ends the rest itself, each
            # client told why, before uvicorn's own deadline would cut their connections.
            draining = asyncio.get_running_loop().run_in_executor(None, server.batcher.drain, server.limits.shutdown_s)
            await super().shutdown(sockets)
            await draining

    # uvicorn logs requests on stdout by default; stdout carries only the URL (a script reads it).
    logging_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    for handler in logging_config["handlers"].values():
        handler["stream"] = "ext://sys.stderr"
    config = uvicorn.Config(make_app(server), log_level="info", access_log=True, server_header=False,
                            log_config=logging_config, timeout_graceful_shutdown=server.limits.shutdown_s + 5,
                            timeout_keep_alive=5)
    # uvicorn raises the signal it stopped on again once it has shut down; by then stopping is
    # what happened, so SIGTERM is caught (to exit 0) and Ctrl-C's KeyboardInterrupt swallowed.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        _Uvicorn(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.batcher.stop()
        sock.close()
