"""`llmkit serve`, started for real on a free loopback port and spoken to with the official
`openai` client: the text equals `llmkit generate` for the same prompt, seed and settings, streamed
or not, alone or among concurrent requests; bad requests get their 4xx; a client that leaves, a
burst past the queue and SIGTERM during a stream leave nothing hanging."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("transformers")

from test_llama import tiny_llama  # noqa: E402

NAME = "tiny-llama"


class Served:
    """A `llmkit serve` process on port 0 (a free one, which it prints); its log goes to a file."""

    def __init__(self, model, *options: str, log: Path):
        self.log = log
        with open(log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "llmkit", "serve", str(model), "--port", "0", *options],
                                         stdout=subprocess.PIPE, stderr=err, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 120)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("http://127.0.0.1:"):
            self.proc.kill()
            raise AssertionError(f"the server did not start: {line!r}\n{log.read_text()[-3000:]}")
        self.url = line.strip()  # http://127.0.0.1:PORT/v1
        self.root = self.url.removesuffix("/v1")

    def client(self, key: str = "none"):
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=120)

    def post(self, path: str, body, **options) -> httpx.Response:
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return httpx.post(self.url + path, content=content, headers={"Content-Type": "application/json"},
                          timeout=120, **options)

    def health(self) -> dict:
        return httpx.get(self.root + "/health", timeout=30).json()

    def idle(self, timeout: float = 20) -> bool:
        """Whether every row leaves the batch within `timeout` seconds."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.health()["rows"] == 0:
                return True
            time.sleep(0.05)
        return False

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("the server did not stop on SIGTERM") from None


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("serve") / NAME
    tiny_llama(directory, max_position_embeddings=4096)
    return directory


@pytest.fixture(scope="module")
def server(model_dir):
    served = Served(model_dir, "--max-batch", "8", "--max-tokens", "4000", log=model_dir.parent / "serve.log")
    yield served
    assert served.stop() == 0


@pytest.fixture(scope="module")
def local(model_dir):
    from llmkit.loading import load_model

    return load_model(str(model_dir))


def generated(cli, model_dir, *options: str) -> list[str]:
    """The texts `llmkit generate --json` prints."""
    result = cli("generate", model_dir, "--json", "--context", "stop", "--device", "cpu", *options)
    assert result.code == 0, result.err
    return [json.loads(line)["text"] for line in result.out.splitlines()]


def streamed(stream) -> tuple[list[str], list[str | None], dict | None]:
    """Every choice's text and finish reason from a stream of chunks (and the usage, if sent)."""
    texts, finishes, usage = {}, {}, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            piece = choice.delta.content if hasattr(choice, "delta") else choice.text
            texts[choice.index] = texts.get(choice.index, "") + (piece or "")
            if choice.finish_reason is not None:
                finishes[choice.index] = choice.finish_reason
    return [texts[i] for i in sorted(texts)], [finishes.get(i) for i in sorted(texts)], usage


PROMPT = "hello world, how are"


@pytest.mark.parametrize("options,body", [
    (("--temperature", "0.9", "--top-k", "100000", "--seed", "3"), {"temperature": 0.9, "seed": 3}),
    (("--temperature", "0",), {"temperature": 0}),
    (("--temperature", "1.0", "--top-k", "20", "--top-p", "0.8", "--seed", "5", "--num-samples", "2"),
     {"temperature": 1.0, "top_p": 0.8, "seed": 5, "n": 2, "extra_body": {"top_k": 20}}),
    (("--temperature", "0.8", "--top-k", "100000", "--repetition-penalty", "1.3", "--seed", "9", "--stop", "o"),
     {"temperature": 0.8, "seed": 9, "stop": ["o"], "extra_body": {"repetition_penalty": 1.3}}),
], ids=["sampled", "greedy", "n2-topk-topp", "penalty-stop"])
def test_a_completion_is_what_generate_prints(server, model_dir, cli, options, body):
    want = generated(cli, model_dir, "-p", PROMPT, "-n", "24", *options)
    client = server.client()
    whole = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=24, **body)
    assert [c.text for c in whole.choices] == want
    assert all(c.finish_reason in ("stop", "length") for c in whole.choices)
    if "stop" in body:
        assert all("o" not in c.text for c in whole.choices)
    texts, finishes, _ = streamed(client.completions.create(model=NAME, prompt=PROMPT, max_tokens=24, stream=True, **body))
    assert texts == want and finishes == [c.finish_reason for c in whole.choices]
    assert whole.usage.prompt_tokens == len(server_ids(model_dir, PROMPT))
    assert whole.usage.completion_tokens <= 24 * len(want)


def server_ids(model_dir, text):
    from llmkit.loading import load_model

    return load_model(str(model_dir)).tokenizer.encode(text).tolist()


def test_a_chat_answer_is_what_generate_chat_prints(server, model_dir, cli):
    message = "how are you?"
    want = generated(cli, model_dir, "--chat", "-p", message, "-n", "30", "--temperature", "0.7", "--top-k", "100000",
                     "--seed", "11")
    client = server.client()
    messages = [{"role": "user", "content": message}]
    whole = client.chat.completions.create(model=NAME, messages=messages, max_tokens=30, temperature=0.7, seed=11)
    assert [c.message.content for c in whole.choices] == want and whole.choices[0].message.role == "assistant"
    texts, _, usage = streamed(client.chat.completions.create(model=NAME, messages=messages, max_tokens=30,
                                                              temperature=0.7, seed=11, stream=True,
                                                              stream_options={"include_usage": True}))
    assert texts == want
    assert usage.completion_tokens == whole.usage.completion_tokens and usage.prompt_tokens == whole.usage.prompt_tokens


def test_seeds_repeat_and_differ(server, model_dir):
    client = server.client()

    def ask(seed):
        return client.completions.create(model=NAME, prompt=PROMPT, max_tokens=16, temperature=1.0, seed=seed).choices[0].text

    before = server.health()["prompt_cache"]
    assert ask(1) == ask(1) and ask(2) == ask(2)  # the repeats copy all of the prompt but its last token
    after = server.health()["prompt_cache"]
    n = len(server_ids(model_dir, PROMPT))
    assert after["reused_tokens"] - before["reused_tokens"] >= 3 * (n - 1) and 0 < after["mb"] <= 128
    assert len({ask(1), ask(2), ask(3)}) == 3
    unseeded = [client.completions.create(model=NAME, prompt=PROMPT, max_tokens=16, temperature=1.0).choices[0].text
                for _ in range(3)]
    assert len(set(unseeded)) == 3  # without a seed, each request draws its own


def test_concurrent_streams_each_get_what_they_get_alone(server, local):
    """Eight streaming clients at once, with different prompts, lengths and seeds, are batched
    together; each text is the one it gets alone (llmkit.generate, in this process)."""
    from llmkit import generate
    from llmkit.inference.sampling import Sampling

    prompts = [f"{'hello ' * (i % 4)}world number {i}" for i in range(8)]
    lengths = [40, 8, 60, 20, 33, 5, 50, 12]
    wants = [generate(local, p, max_new_tokens=m, sampling=Sampling(1.0, None), seed=100 + i, context="stop").run()[0].text
             for i, (p, m) in enumerate(zip(prompts, lengths))]
    got, peak = [None] * 8, []
    client = server.client()

    def one(i):
        stream = client.completions.create(model=NAME, prompt=prompts[i], max_tokens=lengths[i], temperature=1.0,
                                           seed=100 + i, stream=True)
        got[i] = streamed(stream)[0][0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak.append(server.health()["rows"])
        time.sleep(0.005)
    for t in threads:
        t.join()
    assert got == wants
    assert max(peak) > 1  # they were decoded together
    assert server.idle()


def test_a_fast_models_stream_comes_in_few_chunks_with_the_same_text(server):
    """The tiny model makes a token in about a millisecond, far less than --stream-interval's
    default 20 ms: its stream sends what came meanwhile as one chunk, not a chunk per token, and
    the chunks make the text a reply without streaming gets."""
    client = server.client()
    body = dict(model=NAME, prompt=PROMPT, max_tokens=64, temperature=0)
    whole = client.completions.create(**body)
    pieces = [c.choices[0].text for c in client.completions.create(**body, stream=True) if c.choices and c.choices[0].text]
    assert "".join(pieces) == whole.choices[0].text and whole.usage.completion_tokens == 64
    assert len(pieces) < 32  # a few chunks (the first text goes at once: the Mailbox test below)


def test_a_compiled_server_serves_concurrent_streams_as_generate_does(model_dir, local, tmp_path):
    """`serve --compile` compiles before it listens, then batches as the eager server does: each
    of four concurrent streams gets the text llmkit.generate (eager, in this process) gives alone."""
    from llmkit import generate
    from llmkit.inference.sampling import Sampling

    served = Served(model_dir, "--compile", "--max-batch", "4", log=tmp_path / "compiled.log")
    try:
        assert "compiling the decoding step" in served.log.read_text()
        prompts, lengths = [f"{'hello ' * i}world {i}" for i in range(4)], [30, 9, 44, 17]
        wants = [generate(local, p, max_new_tokens=m, sampling=Sampling(1.0, None), seed=7 + i, context="stop").run()[0].text
                 for i, (p, m) in enumerate(zip(prompts, lengths))]
        got = [None] * 4

        def one(i):
            stream = served.client().completions.create(model=NAME, prompt=prompts[i], max_tokens=lengths[i],
                                                        temperature=1.0, seed=7 + i, stream=True)
            got[i] = streamed(stream)[0][0]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got == wants
    finally:
        assert served.stop() == 0


@pytest.mark.parametrize("body,status,words", [
    ({"temperature": 3}, 400, "temperature"),
    ({"temperature": "hot"}, 400, "temperature"),
    ({"n": 0}, 400, "n"),
    ({"n": 9}, 400, "at most 8"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"max_tokens": 4001}, 400, "--max-tokens"),
    ({"seed": -1}, 400, "seed"),
    ({"stop": [1, 2]}, 400, "stop"),
    ({"stop": ["x"] * 17}, 400, "at most 16 stop strings"),
    ({"logprobs": True}, 400, "'logprobs' is not supported"),
    ({"prompt": [1, 2, 3]}, 400, "prompt"),
    ({"prompt": []}, 400, "prompts"),
    ({"prompt": "hello " * 3000}, 400, "at most 2048"),
    ({"prompt": "hello " * 1000, "max_tokens": 4000}, 400, "leaves room for"),
    ({"model": "gpt-4"}, 404, "'gpt-4' is not served here"),
    ({"model": None}, 400, "model"),
], ids=lambda x: str(x)[:40])
def test_bad_completion_requests_are_4xx_with_the_field_named(server, body, status, words):
    reply = server.post("/completions", {"model": NAME, "prompt": PROMPT, "max_tokens": 4, **body})
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"
    assert server.health()["status"] == "ok"


@pytest.mark.parametrize("body,status,words", [
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "role"),
    ({"messages": [{"role": "user"}]}, 400, "content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "content"),
    ({"messages": "hello"}, 400, "messages"),
    ({"tools": [{"type": "function"}]}, 400, "'tools' is not supported"),
], ids=lambda x: str(x)[:40])
def test_bad_chat_requests_are_4xx(server, body, status, words):
    reply = server.post("/chat/completions", {"model": NAME, "messages": [{"role": "user", "content": "hi"}], **body})
    assert reply.status_code == status, reply.text
    assert words in reply.json()["error"]["message"]


def test_bodies_that_are_not_requests(server):
    for content, status, words in [(b"{bad", 400, "not JSON"), (b"[1, 2]", 400, "dict"),
                                   (b'{"model": "tiny-llama", "prompt": "x", "temperature": NaN}', 400, "finite"),
                                   (b"x" * (1 << 20 + 1), 413, "--max-body")]:
        reply = server.post("/completions", content)
        assert reply.status_code == status and words in reply.json()["error"]["message"], reply.text
    # unknown paths and methods, and the same through the client
    assert httpx.get(server.url + "/nothing").status_code == 404
    assert httpx.get(server.url + "/completions").status_code == 405
    with pytest.raises(openai.NotFoundError):
        server.client().chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="context"):
        server.client().completions.create(model=NAME, prompt="hello " * 1000, max_tokens=4000)
    assert [m.id for m in server.client().models.list()] == [NAME]


def test_an_api_key_is_required_when_set(model_dir, tmp_path):
    served = Served(model_dir, "--api-key", "s3cret", "--threads", "1", "--prompt-cache", "0", log=tmp_path / "serve.log")
    try:
        for key in ("wrong", "s3cret-not"):
            with pytest.raises(openai.AuthenticationError):
                served.client(key).models.list()
        assert httpx.get(served.url + "/models").status_code == 401
        assert served.client("s3cret").completions.create(model=NAME, prompt="hi", max_tokens=2).choices[0].text is not None
        assert served.health()["status"] == "ok"  # the health check needs no key
    finally:
        assert served.stop() == 0


def test_a_client_that_leaves_mid_stream_frees_its_row(server):
    with httpx.stream("POST", server.url + "/completions", timeout=60,
                      json={"model": NAME, "prompt": PROMPT, "max_tokens": 4000, "temperature": 0,
                            "stream": True}) as reply:
        lines = reply.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert got[0].startswith("data: {") and server.health()["rows"] == 1
    assert server.idle(10)  # its row left the batch long before its 4000 tokens
    assert server.client().completions.create(model=NAME, prompt="hi", max_tokens=3).choices[0].finish_reason


def test_a_burst_past_the_queue_is_refused_fast_and_memory_returns(model_dir, tmp_path):
    served = Served(model_dir, "--max-batch", "1", "--max-queue", "2", log=tmp_path / "serve.log")
    try:
        client = served.client()
        client.completions.create(model=NAME, prompt=PROMPT, max_tokens=50)  # warm
        idle_mb = served.rss_mb()
        results = [None] * 12

        def one(i):
            start = time.monotonic()
            try:
                client.completions.create(model=NAME, prompt=PROMPT, max_tokens=400, seed=i)
                results[i] = ("ok", time.monotonic() - start)
            except openai.RateLimitError as e:
                results[i] = (e.status_code, time.monotonic() - start)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        refused = [seconds for what, seconds in results if what == 429]
        assert len(refused) >= 8 and max(refused) < 5, results  # at most 1 running + 2 waiting + stragglers
        assert sum(1 for what, _ in results if what == "ok") >= 3
        assert served.idle()
        assert client.completions.create(model=NAME, prompt=PROMPT, max_tokens=5).choices[0].text is not None
        assert served.rss_mb() < idle_mb + 50, (idle_mb, served.rss_mb())
    finally:
        assert served.stop() == 0


def test_sigterm_during_a_stream_ends_it_and_exits_0(model_dir, tmp_path):
    served = Served(model_dir, "--shutdown-timeout", "0", "--max-tokens", "4000", log=tmp_path / "serve.log")
    ended = threading.Event()
    lines = []

    def stream():
        try:
            with httpx.stream("POST", served.url + "/completions", timeout=60,
                              json={"model": NAME, "prompt": PROMPT, "max_tokens": 4000, "temperature": 0,
                                    "stream": True}) as reply:
                for line in reply.iter_lines():
                    lines.append(line)
        except httpx.HTTPError:
            pass  # cut off: the server went away
        ended.set()

    thread = threading.Thread(target=stream)
    thread.start()
    deadline = time.monotonic() + 60
    while len(lines) < 4 and not ended.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(lines) >= 4 and lines[0].startswith("data: {"), lines
    start = time.monotonic()
    assert served.stop(30) == 0
    assert time.monotonic() - start < 15
    assert ended.wait(10)  # the client is not left hanging
    assert "data: [DONE]" not in lines, lines[-5:]  # it was cut, not finished (4000 tokens take longer)
    assert "the server is shutting down" in [line for line in lines if line][-1], lines[-3:]  # and told why
    log = served.log.read_text()
    assert "Shutting down" in log and "Traceback" not in log, log[-3000:]


def test_sigterm_lets_a_short_request_finish(model_dir, tmp_path):
    served = Served(model_dir, "--shutdown-timeout", "20", log=tmp_path / "serve.log")
    reply = {}

    def ask():
        reply["r"] = served.post("/completions", {"model": NAME, "prompt": PROMPT, "max_tokens": 300})

    thread = threading.Thread(target=ask)
    thread.start()
    while served.health()["rows"] == 0 and thread.is_alive():
        time.sleep(0.005)
    assert served.stop(60) == 0
    thread.join(30)
    assert reply["r"].status_code == 200 and reply["r"].json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_models_and_names_that_cannot_be_served_are_refused(cli, workdir, model_dir):
    missing = cli("serve", workdir / "nothing-here")
    assert missing.code == 2 and "Traceback" not in missing.err
    trained = cli("train", str(Path(__file__).resolve().parents[1] / "recipes" / "encoder_mlm.yaml"), "out_dir=enc",
                  "train.max_steps=1", "train.eval_interval=1", "train.eval_steps=1", "model.n_layer=1",
                  "model.n_embd=32", "model.n_head=2", "--device", "cpu")
    assert trained.code == 0, trained.err
    encoder = cli("serve", "enc")
    assert encoder.code == 2 and "an encoder (masked LM)" in encoder.err
    for name in ("", "x" * 201, "tab\there"):  # refused before the model loads, so never listening
        result = cli("serve", model_dir, "--name", name)
        assert result.code == 2 and "--name must be 1 to 200 printable characters" in result.err
    for flag, value in [("--threads", "0"), ("--threads", "-1"), ("--threads", "many"), ("--prompt-cache", "-1"),
                        ("--prompt-cache", str(1 << 21)), ("--prompt-cache", "1.5")]:
        result = cli("serve", model_dir, flag, value)
        assert result.code == 2 and flag in result.err and "Traceback" not in result.err


def test_a_port_in_use_is_a_message(server, model_dir, cli):
    port = server.url.rsplit(":", 1)[1].split("/")[0]
    result = cli("serve", model_dir, "--port", port)
    assert result.code == 2 and "cannot listen on 127.0.0.1:" in result.err and "Traceback" not in result.err


SMOLLM2 = Path(os.environ.get("LLMKIT_DATA_MIRROR", "../shared/data")) / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.skipif(not SMOLLM2.is_file(), reason=f"needs the SmolLM2 GGUF file ({SMOLLM2})")
def test_smollm2_answers_over_http_as_generate_does(cli, tmp_path):
    question = "What is the capital of France?"
    want = generated(cli, "smollm2", "--chat", "-p", question, "--temperature", "0", "-n", "40")
    served = Served("smollm2", log=tmp_path / "serve.log")
    try:
        answer = served.client().chat.completions.create(model="smollm2", temperature=0, max_tokens=40,
                                                          messages=[{"role": "user", "content": question}])
        assert answer.choices[0].message.content == want[0] and "Paris" in want[0]
        assert answer.choices[0].finish_reason == "stop"  # it ended its turn (<|im_end|>)
        # The next turn sends this one back: the prompt cache copies it (its prompt and answer), and
        # the second answer is what `llmkit chat` answers in the same conversation
        before = served.health()["prompt_cache"]["reused_tokens"]
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": want[0]},
                    {"role": "user", "content": "And of Germany?"}]
        second = served.client().chat.completions.create(model="smollm2", temperature=0, max_tokens=40, messages=messages)
        # all of the first turn: its prompt and its answer, whose <|im_end|> (sampled, not counted) was never fed
        first_turn = answer.usage.prompt_tokens + answer.usage.completion_tokens
        assert served.health()["prompt_cache"]["reused_tokens"] - before == first_turn
        chat = cli("chat", "smollm2", "--temperature", "0", "-n", "40", stdin=f"{question}\nAnd of Germany?\n")
        assert chat.code == 0 and chat.out == f"{want[0]}\n{second.choices[0].message.content}\n"
    finally:
        assert served.stop() == 0


def test_the_judge_loop_finetune_scored_by_a_served_model(model_dir, cli, workdir, tmp_path):
    """`llmkit finetune instruct --judge-url` against `llmkit serve`: every answer is put to the
    served model; its replies (random words from this tiny model, so seldom a score) are kept."""
    served = Served(model_dir, "--max-tokens", "6", log=tmp_path / "serve.log")
    try:
        result = cli("finetune", "instruct", "train.max_steps=1", "train.eval_interval=1", "train.eval_steps=1",
                     "train.sample_tokens=0", "model.n_layer=1", "model.n_embd=32", "data.vocab_size=300",
                     f"data.root={tmp_path / 'data'}", "--judge-url", served.url, "--judge-model", NAME,
                     "--device", "cpu", "--json")
        assert result.code == 0, result.err
        report = json.loads(result.out.splitlines()[-1])
        records = json.loads((workdir / "runs" / "instruct" / "test_responses.json").read_text(encoding="utf-8"))
        assert report["judge"] == NAME and report["judge_scored"] == sum(r["judge_score"] is not None for r in records)
        from llmkit.tasks.scoring import Judge

        first = records[0]
        again = served.client().chat.completions.create(model=NAME, temperature=0, messages=[
            {"role": "user", "content": Judge.question(first)}])
        assert first["judge_reply"] == again.choices[0].message.content  # the reply came from the server
        assert served.log.read_text().count("POST /v1/chat/completions") == len(records) + 1
    finally:
        assert served.stop() == 0


def test_a_chat_request_to_a_model_without_a_template_is_a_400(debug_run):
    from llmkit.loading import load_model
    from llmkit.serving.app import ApiError, Limits, Server
    from llmkit.serving.protocol import ChatBody

    server = Server(load_model(debug_run), "debug", None, Limits(), None)  # no batcher: refused before it
    body = ChatBody(model="debug", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(ApiError) as refused:
        server.chat_prompt(body)
    message = refused.value.body["error"]["message"]
    assert refused.value.status == 400 and "the model 'debug' has no chat template" in message
    assert "POST /v1/completions" in message and refused.value.body["error"]["param"] == "messages"


def test_the_model_gets_all_cores_but_one_unless_told(monkeypatch):
    """serve's --threads: a number is taken as given; by default one core is left to the event
    loop (never fewer than one thread); a user's $OMP_NUM_THREADS is kept."""
    import torch

    from llmkit.serving.app import model_threads

    before = torch.get_num_threads()
    try:
        assert model_threads(3) == 3 == torch.get_num_threads()
        torch.set_num_threads(before)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        cores = len(os.sched_getaffinity(0))
        assert model_threads(None) == max(1, min(before, cores - 1)) == torch.get_num_threads()
        torch.set_num_threads(before)
        monkeypatch.setenv("OMP_NUM_THREADS", str(before))
        assert model_threads(None) == before == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_events_from_the_batcher_thread_arrive_in_order_in_few_wake_ups():
    """The mailbox hands events to the event loop in batches: 200 events posted while the loop is
    busy arrive in order after one wake-up; once the loop is closed, a post raises (the batcher
    then stops that request's rows)."""
    import asyncio

    from llmkit.serving.app import Mailbox

    async def main():
        loop = asyncio.get_running_loop()
        mailbox, queues = Mailbox(loop), [asyncio.Queue(), asyncio.Queue()]
        wake_ups = []
        original = mailbox._hand_over
        mailbox._hand_over = lambda timer: (wake_ups.append(timer), original(timer))
        posting = threading.Thread(target=lambda: [mailbox.post(queues[i % 2], i) for i in range(200)])
        posting.start()
        posting.join()  # the loop is not running meanwhile: every post waits for one hand-over
        got = [[await q.get() for _ in range(100)] for q in queues]
        assert got == [list(range(0, 200, 2)), list(range(1, 200, 2))] and wake_ups == [False]
        return mailbox

    loop = asyncio.new_event_loop()
    mailbox = loop.run_until_complete(main())
    loop.close()
    with pytest.raises(RuntimeError):
        mailbox.post(asyncio.Queue(), 0)
    with pytest.raises(RuntimeError):
        mailbox.post(asyncio.Queue(), 1)


def test_text_waits_for_the_stream_interval_and_what_ends_goes_at_once():
    """With an interval, text posted soon after a hand-over waits for the interval's end and comes
    in one hand-over; a first text or an end goes at once, taking what waits with it; text after a
    quiet interval goes at once."""
    import asyncio

    from llmkit.serving.app import Mailbox

    async def main():
        loop = asyncio.get_running_loop()
        mailbox, queue = Mailbox(loop, interval=0.3), asyncio.Queue()
        wake_ups = []  # True: a hand-over after a wait, False: at once
        original = mailbox._hand_over
        mailbox._hand_over = lambda timer: (wake_ups.append(timer), original(timer))

        def post(*items):  # (item, urgent), from another thread as the batcher posts
            poster = threading.Thread(target=lambda: [mailbox.post(queue, item, urgent) for item, urgent in items])
            poster.start()
            poster.join()

        async def got(n):
            return [await asyncio.wait_for(queue.get(), 30) for _ in range(n)]

        post(("first", True))
        start = time.monotonic()
        assert await got(1) == ["first"]
        post(("a", False), ("b", False))
        await asyncio.sleep(0.1)
        assert queue.empty()
        assert await got(2) == ["a", "b"] and time.monotonic() - start >= 0.29 and wake_ups == [False, True]
        post(("c", False), ("end", True))
        assert await got(2) == ["c", "end"] and wake_ups[:3] == [False, True, False]
        await asyncio.sleep(0.5)  # the wait "c" started runs out, with nothing left to bring
        post(("d", False))
        assert await got(1) == ["d"] and wake_ups[-1] is False and len(wake_ups) == 5

    loop = asyncio.new_event_loop()
    loop.run_until_complete(main())
    loop.close()
