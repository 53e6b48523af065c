"""A hostile user's session: bad inputs and faults across every command, each run as a real
process, and a count of how each ended.

A case is handled when the process ends with the code it should (2 for bad input, unless the case
says otherwise), prints `error:` and no Python traceback, and stays within its time limit. Anything
else is listed: a traceback, a hang, a wrong exit code (0 on bad input above all), or a case's own
check (a file that must be left unchanged, no debris).

    LLMKIT_DATA_MIRROR=../shared/data .venv/bin/python scripts/hostile.py            # every case
    .venv/bin/python scripts/hostile.py --only generate,eval --json                  # some commands

It builds what it needs first in a scratch directory (a tiny trained run, shards, a GPT-2-shaped
run, an export, a Llama directory), so it takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = str(REPO / "recipes" / "debug.yaml")
SMALL = ["train.max_steps=3", "train.eval_interval=3", "train.eval_steps=1", "train.sample_tokens=0", "--device", "cpu"]


@dataclass
class Case:
    command: str  # the llmkit subcommand it exercises
    args: list[str]
    code: int = 2
    stdin: str | None = None
    limit_s: float = 120.0
    words: tuple[str, ...] = ()  # that stderr must contain
    check: object = None  # a function returning an error string or None, run after the process
    env: dict = field(default_factory=dict)


def llmkit(args, cwd: Path, stdin=None, limit=120.0, env=None, stdout=subprocess.PIPE):
    return subprocess.run([sys.executable, "-m", "llmkit", *map(str, args)], cwd=cwd, input=stdin, text=True,
                          stdout=stdout, stderr=subprocess.PIPE, timeout=limit, env={**os.environ, **(env or {})})


def prepare(root: Path) -> dict:
    """A tiny char run, shards, a GPT-2-shaped BPE run, and files to break."""
    def ok(args):
        proc = llmkit(args, root, limit=600)
        if proc.returncode:
            raise SystemExit(f"setup failed: llmkit {shlex.join(map(str, args))}\n{proc.stderr}")
        return proc.stdout.strip()

    run = ok(["train", RECIPE, "out_dir=runs/debug", *SMALL])
    text = root / "text.txt"
    text.write_text((Path(os.environ["LLMKIT_DATA_MIRROR"]) / "tinyshakespeare/input.txt").read_text()[:20000])
    shards = ok(["tokenize", text, "--out", "shards"])
    bpe = ok(["train", "wikitext2_bpe", "model.bias=true", "model.n_layer=1", "model.n_embd=32", "data.vocab_size=300",
              "out_dir=runs/bpe", *SMALL])
    ok(["export", bpe, "--out", "exported"])
    (root / "a_file").write_text("not a directory\n")
    (root / "user_dir").mkdir()
    (root / "user_dir" / "config.json").write_text('{"mine": true}\n')
    broken = root / "broken.pt"
    data = bytearray((root / run / "best.pt").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(16)
    broken.write_bytes(bytes(data))
    (root / "empty.txt").write_text("")
    (root / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (root / "bomb.yaml").write_text("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                                    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                                    "model: *d\n")
    (root / "dup.yaml").write_text("name: d\ntrain:\n  lr: 0.1\n  lr: 0.2\n")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "tags.yaml").write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    (root / "huge.yaml").write_text("# " + "x" * (2 << 20) + "\nname: h\n")
    (root / "fake.gguf").write_bytes(b"GGUF" + bytes(64))
    (root / "not.gguf").write_bytes(b"hello world")
    (root / "prompts_empty.txt").write_text("\n\n")
    hf_bad = root / "hf_bad"
    shutil.copytree(root / "exported", hf_bad)
    config = json.loads((hf_bad / "config.json").read_text())
    config["n_layer"] = "two"
    (hf_bad / "config.json").write_text(json.dumps(config))
    hf_unknown = root / "hf_unknown"
    shutil.copytree(root / "exported", hf_unknown)
    (hf_unknown / "config.json").write_text(json.dumps({**json.loads((root / "exported/config.json").read_text()),
                                                        "model_type": "falcon"}))
    return {"run": run, "shards": shards, "bpe": bpe, "text": str(text)}


def unchanged(path: Path, content: str):
    return lambda: None if path.read_text() == content else f"{path} was changed"


def no_debris(directory: Path):
    def check():
        left = [p.name for p in directory.rglob(".*.tmp")] if directory.exists() else []
        return f"temporary files left in {directory}: {left}" if left else None
    return check


def cases(root: Path, made: dict) -> list[Case]:
    run, bpe, text = made["run"], made["bpe"], made["text"]
    under_file, long_name = "a_file/x", "x" * 300
    out = []
    # 1. outputs that cannot be written, for every command that writes
    for where in (under_file, long_name, "/proc/llmkit-x"):
        out += [Case("download", ["download", "shakespeare", "--data-dir", where]),
                Case("tokenize", ["tokenize", text, "--out", where]),
                Case("train", ["train", RECIPE, f"out_dir={where}/run", *SMALL]),
                Case("plot", ["plot", "masks", "--out", f"{where}/m.png"]),
                Case("plot", ["plot", "loss", run, "--out", f"{where}/l.png"]),
                Case("plot", ["plot", "lr", "debug", "--out", f"{where}/lr.png"]),
                Case("export", ["export", bpe, "--out", f"{where}/e"])]
    out += [Case("plot", ["plot", "masks", "--out", "user_dir"]),
            Case("export", ["export", bpe, "--out", "a_file"]),
            Case("export", ["export", bpe, "--out", "user_dir"], check=unchanged(root / "user_dir/config.json", '{"mine": true}\n')),
            Case("tokenize", ["tokenize", text, "--out", run], words=("not a shard directory",)),
            Case("tokenize", ["tokenize", text, "--out", "a_file"])]
    # 2. numbers out of range or not finite
    for key in ("train.lr=nan", "train.lr=inf", "train.lr=-0.1", "train.lr=1e9", "train.seed=-3",
                "train.seed=123456789012345678901234567890", "model.n_layer=100000000", "model.n_layer=1e22",
                "model.n_embd=0", "model.dropout=1", "model.dropout=nan", "train.batch_size=0",
                "train.max_steps=-1", "train.warmup_steps=nan", "train.grad_clip=inf", "train.weight_decay=-1",
                "data.val_fraction=0", "data.val_fraction=nan", "model.block_size=99999999",
                "train.micro_batch_size=5", "train.beta1=1", "model.norm_eps=0", "model.rope_base=-1",
                "train.lora.rank=0", "model.vocab_size=0", "train.eval_interval=0"):
        out.append(Case("train", ["train", RECIPE, key, "out_dir=runs/numbers", *SMALL], limit_s=30, words=(key.split("=")[0],)))
    out.append(Case("train", ["train", "wikitext2_bpe", "data.vocab_size=1000000000", "out_dir=runs/v", *SMALL], limit_s=30))
    out.append(Case("train", ["train", RECIPE, "model.n_layer=4096", "model.n_embd=16384", "--dry-run"], limit_s=60,
                    words=("parameters",)))
    for option in (["--temperature", "nan"], ["--temperature", "-1"], ["--temperature", "1e9"], ["--top-k", "0"],
                   ["--top-p", "nan"], ["--top-p", "0"], ["--top-p", "1.5"], ["--min-p", "-0.1"], ["--min-p", "nan"],
                   ["--repetition-penalty", "nan"], ["--repetition-penalty", "0"], ["--repetition-penalty", "-2"],
                   ["--length-penalty", "nan", "--beam", "2"], ["--length-penalty", "1e300", "--beam", "2"],
                   ["--seed", "-1"], ["--seed", str(2**64)], ["-n", "-1"], ["-n", str(10**12)], ["--num-samples", "0"],
                   ["--num-samples", str(10**9)], ["--beam", "0"], ["--context", "wrap"], ["--dtype", "fp8"],
                   ["--dtype", "fp16", "--device", "cpu"], ["--device", "cuda:7"], ["--device", "tpu"],
                   ["--checkpoint", "worst"]):
        out.append(Case("generate", ["generate", run, "-p", "hi", *option], limit_s=30))
    for option in (["--stride", "0"], ["--stride", "99999"], ["--batch-size", "0"], ["--beam", "2"],
                   ["--context", "1", "--text", text], ["--context", "99999", "--text", text], ["--split", "nope"],
                   ["--text", "empty.txt"], ["--text", "binary.txt"], ["--text", "missing.txt"], ["--dtype", "int3"],
                   ["--context", "8"], ["--judge-url", "http://127.0.0.1:9/v1"], ["--data", "a_file"]):
        out.append(Case("eval", ["eval", run, *option], limit_s=60))
    for option in (["--val-fraction", "nan"], ["--val-fraction", "1"], ["--vocab-size", "1000000000", "--tokenizer", "bpe"],
                   ["--vocab-size", "5", "--tokenizer", "char"], ["--vocab-size", "500"], ["--shard-tokens", "0"],
                   ["--tokenizer", "sentencepiece"]):
        out.append(Case("tokenize", ["tokenize", text, "--out", "t", *option], limit_s=30))
    # 3. inputs that would exhaust the machine
    out += [Case("train", ["train", "bomb.yaml"], limit_s=10, words=("aliases",)),
            Case("train", ["train", "huge.yaml"], limit_s=10, words=("too large",)),
            Case("train", ["train", RECIPE, "name=" + "y" * 100000], limit_s=20)]
    # 4. silent acceptance
    out += [Case("train", ["train", "dup.yaml"], words=("twice",)),
            Case("train", ["train", "list.yaml"]),
            Case("train", ["train", "tags.yaml"]),
            Case("train", ["train", RECIPE, "out_dir=runs/debug", "--resume", "--overwrite", *SMALL]),
            Case("train", ["train", RECIPE, "name=", *SMALL]),
            Case("train", ["train", RECIPE, "name=..", *SMALL]),
            Case("train", ["train", RECIPE, "model.n_layers=3"], words=("did you mean",)),
            Case("train", ["train", RECIPE, "train=3"]),
            Case("train", ["train", RECIPE, "nosection.key=1"]),
            Case("train", ["train", RECIPE, "=3"]),
            Case("train", ["train", RECIPE, "train.lr"])]
    # 5. work that must not be lost or overwritten
    out += [Case("train", ["train", RECIPE, f"out_dir={run}", *SMALL], words=("already holds a run",)),
            Case("train", ["train", RECIPE, "out_dir=runs/nothing", "--resume", *SMALL], words=("nothing to resume",)),
            Case("finetune", ["finetune", "instruct", "train.max_steps=1", "train.eval_interval=1", "train.eval_steps=1",
                              "model.n_layer=1", "model.n_embd=16", "data.vocab_size=300", "--judge-url",
                              "http://127.0.0.1:9/v1", "--judge-model", "m", "--device", "cpu"], limit_s=400,
                 words=("did not answer",), check=lambda: None if (root / "runs/instruct/test_responses.json").is_file()
                 else "the answers were not written before the judge failed")]
    # 6. damaged files
    out += [Case("generate", ["generate", "broken.pt", "-p", "hi"], words=("damaged",)),
            Case("eval", ["eval", "broken.pt"], words=("damaged",)),
            Case("generate", ["generate", "fake.gguf", "-p", "hi"]),
            Case("generate", ["generate", "not.gguf", "-p", "hi"]),
            Case("generate", ["generate", "text.txt", "-p", "hi"]),
            Case("generate", ["generate", "hf_bad", "-p", "hi"], words=("n_layer",)),
            Case("generate", ["generate", "hf_unknown", "-p", "hi"], words=("falcon",)),
            Case("export", ["export", "hf_bad", "--out", "x2"]),
            Case("train", ["train", RECIPE, "data.tokens=a_file", "out_dir=runs/t2", *SMALL]),
            Case("train", ["train", RECIPE, f"data.tokens={run}", "out_dir=runs/t3", *SMALL])]
    # other commands with bad targets
    out += [Case("classify", ["classify", run, "--text", "hi"], words=("not a classifier",)),
            Case("chat", ["chat", run], stdin="hi\n", words=("chat template",)),
            Case("generate", ["generate", run, "--chat", "-p", "hi"], words=("chat template",)),
            Case("generate", ["generate", run, "--prompts", "prompts_empty.txt"]),
            Case("generate", ["generate", run, "--prompts", "missing.txt"]),
            Case("generate", ["generate", run, "-p", "Ω≈ unknown chars"]),
            Case("generate", ["generate", run, "--beam", "3", "--num-samples", "2", "-p", "hi"]),
            Case("plot", ["plot", "attention", run, "--prompt", "x" * 500]),
            Case("plot", ["plot", "attention", run, "--prompt", "hi", "--layer", "9"]),
            Case("plot", ["plot", "positions", "--kind", "rope", "--n-embd", "30", "--n-head", "4"]),
            Case("plot", ["plot", "loss", "runs/nope"]),
            Case("plot", ["plot", "lr", "a_file"]),
            Case("export", ["export", run, "--out", "e3"], words=("not GPT-2-shaped",)),
            Case("export", ["export", bpe, "--out", "e4", "--format", "onnx"]),
            Case("export", ["export", bpe, "--out", "e5.gguf", "--format", "gguf", "--type", "q2"]),
            Case("download", ["download", "shakespear"], words=("did you mean",)),
            Case("download", ["download", "wiki"]),
            Case("download", ["download", "spam", "--version", "2"]),
            Case("download", ["download", "shakespeare", "--source", "text.txt", "--data-dir", "d2"], words=("sha256",)),
            Case("finetune", ["finetune", "poetry"]),
            Case("finetune", ["finetune", "spam", "--mode", "lora"]),
            Case("finetune", ["finetune", "spam", "--base", "runs/missing"]),
            Case("finetune", ["finetune", "spam", "--judge-url", "http://x/v1", "--judge-model", "m"]),
            Case("classify", ["classify", "runs/missing"])]
    # serve and chat: bad flags and models, refused before anything listens or waits for input
    for args in (["--port", "70000"], ["--port", "-1"], ["--max-batch", "0"], ["--max-queue", "-5"],
                 ["--shutdown-timeout", "nan"], ["--shutdown-timeout", "1e9"], ["--max-tokens", "99999999999"],
                 ["--max-body", "0"], ["--api-key", "a b"], ["--name", ""], ["--host", "no-such-host.invalid"],
                 ["--host", "8.8.8.8"], ["--dtype", "int3"], ["--checkpoint", "newest"]):
        out.append(Case("serve", ["serve", run, *args], limit_s=60))
    out += [Case("serve", ["serve", "runs/missing"]), Case("serve", ["serve", "fake.gguf"]),
            Case("serve", ["serve", "hf_bad"]), Case("serve", ["serve", "text.txt"]),
            Case("chat", ["chat", run, "--temperature", "nan"], stdin="hi\n"),
            Case("chat", ["chat", "fake.gguf"], stdin="hi\n"),
            Case("chat", ["chat", bpe], stdin="hi\n", words=("chat template",)),
            Case("generate", ["generate", run, "--top-p", "1.5", "-p", "hi"]),
            Case("generate", ["generate", run, "-n", "-1", "-p", "hi"]),
            Case("generate", ["generate", "not.gguf", "-p", "hi"])]
    # debris: a dead writer's temporary file is cleaned by the next run into that directory
    dead = subprocess.Popen(["true"])
    dead.wait()
    debris = root / run / f".latest.pt.{dead.pid}.abcd.tmp"
    debris.write_bytes(b"half a checkpoint")
    out.append(Case("train", ["train", RECIPE, f"out_dir={run}", "train.max_steps=4", "train.eval_interval=4",
                              "train.eval_steps=1", "train.sample_tokens=0", "--device", "cpu", "--resume"], code=0,
                    check=no_debris(root / run)))
    return out


def outcome(case: Case, root: Path) -> str | None:
    """None when handled, else what went wrong."""
    start = time.perf_counter()
    try:
        proc = llmkit(case.args, root, case.stdin, case.limit_s, case.env)
    except subprocess.TimeoutExpired:
        return f"hang: no answer within {case.limit_s:.0f} s"
    seconds = time.perf_counter() - start
    err = proc.stderr
    if "Traceback" in err or "Traceback" in (proc.stdout or ""):
        return "traceback: " + err.strip().splitlines()[-1][:160]
    if proc.returncode != case.code:
        return f"exit {proc.returncode}, expected {case.code}: {err.strip()[:160]}"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if case.code == 2 and len(errors) != 1 and "Usage:" not in err:
        return f"not one error line ({len(errors)}): {err.strip()[-160:]}"
    if len(err) > 4000:
        return f"a message of {len(err):,} characters"
    missing = [w for w in case.words if w not in err]
    if missing:
        return f"the message lacks {missing}: {err.strip()[:160]}"
    problem = case.check() if case.check else None
    return problem or (f"slow: {seconds:.0f} s" if seconds > case.limit_s else None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", help="comma-separated commands to try (default: all)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if "LLMKIT_DATA_MIRROR" not in os.environ:
        raise SystemExit("set LLMKIT_DATA_MIRROR (e.g. ../shared/data): the cases train tiny models on its data")
    os.environ["LLMKIT_DATA_MIRROR"] = str(Path(os.environ["LLMKIT_DATA_MIRROR"]).resolve())
    root = Path(tempfile.mkdtemp(prefix="llmkit-hostile-"))
    try:
        made = prepare(root)
        chosen = [c for c in cases(root, made) if not args.only or c.command in args.only.split(",")]
        failures = []
        for case in chosen:
            problem = outcome(case, root)
            if problem:
                failures.append({"command": "llmkit " + shlex.join(map(str, case.args))[:200], "problem": problem})
        summary = {"tried": len(chosen), "handled": len(chosen) - len(failures), "not_handled": failures}
        if args.json:
            print(json.dumps(summary))
        else:
            print(f"{summary['handled']} of {summary['tried']} cases handled")
            for f in failures:
                print(f"  NOT HANDLED {f['command']}\n      {f['problem']}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
