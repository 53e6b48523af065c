"""Inputs built to exhaust the machine: a YAML alias bomb, a recipe nested past Python's recursion
limit, a recipe of megabytes, overrides of 100,000 characters, a config.json past 16 MB and a judge
that answers with megabytes. Each is refused quickly, with a short message and exit 2, without
reading (or echoing) the whole thing."""

from __future__ import annotations

import builtins
import http.server
import io
import json
import threading
from pathlib import Path

import pytest

from llmkit.errors import LlmkitError
from llmkit.tasks.scoring import Judge

from conftest import RECIPES, run_subprocess
from faults import refused, within

SHORT = 2000  # characters: an error message longer than this buries its point


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs": `levels` lists of `width` aliases of the list before, 9**9 strings."""
    lines = ["name: bomb", 'l0: &l0 ["lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


# --- recipes --------------------------------------------------------------------------------------


def test_a_yaml_alias_bomb_is_refused_at_once(workdir, cli):
    (workdir / "bomb.yaml").write_text(alias_bomb())
    with within(5):
        result = cli("train", "bomb.yaml")
    refused(result, "aliases")
    assert len(result.err) < SHORT
    assert not (workdir / "runs").exists()


def test_an_alias_bomb_in_an_override_is_refused_at_once(workdir, cli):
    bomb = "[" + ", ".join(["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                           + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]) + "]"
    with within(5):
        result = cli("train", RECIPES / "debug.yaml", f"train.lr={bomb}")
    refused(result, "train.lr")
    assert len(result.err) < SHORT


@pytest.mark.parametrize("nesting", [("[", "]"), ("{x: ", "}")], ids=["lists", "mappings"])
def test_a_recipe_nested_past_the_recursion_limit(nesting, workdir, cli):
    opening, closing = nesting
    (workdir / "deep.yaml").write_text("name: deep\ntrain: " + opening * 20_000 + "1" + closing * 20_000 + "\n")
    with within(10):
        result = cli("train", "deep.yaml")
    refused(result, "deep.yaml")
    assert len(result.err) < SHORT


def test_a_recipe_over_a_megabyte_is_refused_by_its_size(workdir, cli):
    path = workdir / "big.yaml"
    path.write_text("name: big\n" + "# padding\n" * 110_000)
    size = path.stat().st_size
    assert size > 1 << 20
    with within(5):
        result = cli("train", "big.yaml")
    refused(result, f"{size:,} bytes")
    assert len(result.err) < SHORT


LONG = "x" * 100_000
OVERRIDES = {
    "train.lr": f"train.lr={LONG}",
    "name": f"name={LONG}",
    "model.name": f"model.name={LONG}",
    "data.tokenizer": f"data.tokenizer={LONG}",
    "train.device": f"train.device={LONG}",
    "unknown key": f"model.{LONG}=1",
    "no equals sign": LONG,
}


@pytest.mark.parametrize("case", [
    pytest.param(name, id=name) for name in OVERRIDES])
def test_an_override_of_100000_characters_gives_a_short_message(case, workdir, cli):
    with within(5):
        result = cli("train", RECIPES / "debug.yaml", OVERRIDES[case], "--dry-run")  # no --device: it is a case
    refused(result)
    assert len(result.err) < SHORT, f"{len(result.err):,} characters of stderr"
    assert not (workdir / "runs").exists()


def test_a_source_path_of_100000_characters_gives_a_short_message(workdir):
    """A real process: a name this long is the operating system's error, named by the CLI."""
    result = run_subprocess("train", RECIPES / "debug.yaml", f"data.source={LONG}", "--device", "cpu", cwd=workdir)
    refused(result, "too long")
    assert len(result.err) < SHORT


# --- Hugging Face config.json ---------------------------------------------------------------------


def test_a_config_json_over_16_mb_is_refused_unread(workdir, cli, monkeypatch):
    model = workdir / "hf"
    model.mkdir()
    config = model / "config.json"
    with open(config, "w") as f:  # valid JSON, padded past the limit
        f.write('{"model_type": "gpt2",' + " " * (17 << 20) + '"n_layer": 2}')
    (model / "model.safetensors").write_bytes(b"")
    read = {"bytes": 0}

    class Counting(io.TextIOWrapper):
        def read(self, size=-1):
            text = super().read(size)
            read["bytes"] += len(text)
            return text

    real_open = builtins.open

    def spying_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if Path(str(file)).name == "config.json" and "b" not in mode:
            return Counting(handle.detach(), encoding=kwargs.get("encoding") or "utf-8")
        return handle

    monkeypatch.setattr(builtins, "open", spying_open)
    monkeypatch.setattr(io, "open", spying_open)
    with within(10):
        result = cli("generate", model, "-p", "x", "-n", "2")
    refused(result, "config.json", f"{config.stat().st_size:,} bytes")
    assert read["bytes"] < 1 << 20, f"read {read['bytes']:,} characters of a file refused for its size"


# --- a judge that answers too much ----------------------------------------------------------------


class _Flood(http.server.BaseHTTPRequestHandler):
    """Answers every question with a reply far past a judge's limit: a valid JSON body of 3 MB
    (`sized`), or one that never ends (`endless`, until the client hangs up)."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        try:
            if self.path.startswith("/sized"):
                reply = json.dumps({"choices": [{"message": {"content": "85"}}], "pad": "x" * (3 << 20)}).encode()
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            else:
                self.end_headers()
                self.wfile.write(b'{"choices": [{"message": {"content": "85"}}], "pad": "')
                for _ in range(1024):  # 1 GB at most: the client is expected to hang up long before
                    self.wfile.write(b"x" * (1 << 20))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("kind", ["sized", "endless"])
def test_a_judge_that_answers_with_megabytes_is_refused(kind):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flood)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    record = {"instruction": "Say hi.", "input": "", "output": "Hi!", "model_response": "Hello"}
    try:
        judge = Judge(f"http://127.0.0.1:{server.server_port}/{kind}/v1", "judge-model", timeout_s=10)
        with within(20), pytest.raises(LlmkitError, match="did not answer") as caught:
            judge.score(record)
    finally:
        server.shutdown()
        server.server_close()
    assert len(str(caught.value)) < SHORT
