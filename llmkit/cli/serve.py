"""`llmkit serve MODEL`: the model behind an OpenAI-compatible HTTP API (llmkit/serving/)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from llmkit.cli.options import Checkpoint, Compile, Dtype, Model, RunDevice
from llmkit.inference.prompt_cache import DEFAULT_MB


def serve(
    model: Model,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 lets other machines in.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 8000,
    name: Annotated[Optional[str], typer.Option(
        help="The model's name in the API (default: MODEL's last path part).", show_default=False)] = None,
    api_key: Annotated[Optional[str], typer.Option(
        help="Require 'Authorization: Bearer KEY' (default: $LLMKIT_API_KEY; none: anyone who can connect).",
        show_default=False)] = None,
    max_batch: Annotated[int, typer.Option(min=1, max=4096, help="Rows decoded together (a request takes n).")] = 16,
    max_queue: Annotated[int, typer.Option(min=0, max=1_000_000, help="Requests waiting for room; more get 429.")] = 64,
    max_prompt_tokens: Annotated[int, typer.Option(min=1, help="Longest prompt taken, in tokens.")] = 2048,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most new tokens per choice (and the default).")] = 1024,
    max_body: Annotated[int, typer.Option(min=1, help="Largest request body, in bytes.")] = 1 << 20,
    shutdown_timeout: Annotated[float, typer.Option(
        min=0, max=3600, help="On SIGTERM or Ctrl-C, seconds running requests get to finish.")] = 10.0,
    stream_interval: Annotated[int, typer.Option(min=0, max=1000, help="A stream sends its text at most this "
                               "often, in ms: one chunk per token costs more than a fast model's token (0: each).")] = 20,
    threads: Annotated[Optional[int], typer.Option(min=1, max=4096, help="CPU threads for the model's math "
                       "(default: all cores but one, which the HTTP side keeps).", show_default=False)] = None,
    prompt_cache: Annotated[int, typer.Option(min=0, max=1 << 20, help="MB of recent prompts' keys and values "
                            "kept, so that a prompt starting as one did computes only the rest (0: none).")] = DEFAULT_MB,
    dtype: Dtype = "fp32",
    compile_step: Compile = False,
    device: RunDevice = "auto",
    checkpoint: Checkpoint = "best",
) -> None:
    """Serve a model over the OpenAI HTTP API, batching concurrent requests.

    Prints the API's base URL on stdout once it listens; SIGTERM or Ctrl-C stops it.
    Examples: llmkit serve smollm2
              curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
                -d '{"model": "smollm2", "messages": [{"role": "user", "content": "Hi!"}]}'
    """
    from llmkit.console import say
    from llmkit.device import resolve_device
    from llmkit.loading import load_model
    from llmkit.serving.app import Limits, Server, model_threads, name_and_key, run
    from llmkit.serving.batcher import Batcher

    limits = Limits(max_prompt_tokens, max_tokens, max_body, shutdown_timeout, stream_interval / 1000)
    served, api_key = name_and_key(name, model, api_key, host)
    model_threads(threads)
    loaded = load_model(model, checkpoint, resolve_device(device), dtype=dtype, compile=compile_step)
    loaded.require("continues", model)  # a seq2seq run translates numbers: no text API for it
    if compile_step:  # the batcher compiles before the server listens
        say("compiling the decoding step (once; later starts reuse what is cached on disk)")
    batcher = Batcher(loaded.model, loaded.tokenizer, max_batch, max_queue, prompt_cache)

    def announce(url: str) -> None:
        say(f"serving '{served}' at {url} (max batch {max_batch}); Ctrl-C stops")
        print(url, flush=True)

    run(Server(loaded, served, batcher, limits, api_key), host, port, announce)
    sys.stdout.flush()
