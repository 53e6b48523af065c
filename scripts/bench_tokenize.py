"""Tokenizing speed and memory: llmkit against nanoGPT (char) and HF `tokenizers` (BPE), same run.

What is measured, each against its peer on the same text, on the same cores, in the same run:
1. char: MB/s of UTF-8 text through llmkit's CharTokenizer.encode (a numpy table lookup) and
   through nanoGPT's `[stoi[c] for c in text]`, each given N MB of Tiny Shakespeare repeated in one
   call (as nanoGPT's prepare.py does); and the whole `llmkit tokenize --tokenizer char` command
   against nanoGPT's shakespeare_char/prepare.py.
2. bpe: llmkit's train_bpe learns a byte-level BPE from WikiText-2 valid; HF `tokenizers` learns the
   same one the same way (checked to hold the same table). On N MB of WikiText-2 valid+test repeated,
   MB/s of: llmkit's encode_batch over its own chunks (pass 3 of `llmkit tokenize`), HF's fastest
   batch call (encode_batch_fast over 64 KiB chunks, every core) and plain tiktoken on one thread
   over the same chunks. The ids must agree (else exit 1). Also the whole `llmkit tokenize
   --tokenizer bpe` command, which trains its BPE on the text first.
3. memory: peak RSS of `llmkit tokenize --tokenizer bpe` on generated corpora of growing size,
   against HF's encode_batch holding the N MB text and its encodings in memory.
MB is 10^6 bytes of UTF-8 text; memory is in MiB. In the `x peer` column, above 1 means llmkit is
better: faster, or smaller.

    .venv/bin/python scripts/bench_tokenize.py                      # 100 MB; corpora of 250 and 1000 MB
    .venv/bin/python scripts/bench_tokenize.py --mb 20 --skip-rss   # a quick look
    .venv/bin/python scripts/bench_tokenize.py --rss-sizes 250,1000,4000 --vocab-size 32768
    .venv/bin/python scripts/bench_tokenize.py --json               # one JSON object per result

Keep the machine otherwise idle while it runs: the numbers are only as quiet as the machine. Temporary
files (the texts, corpora of up to max(--rss-sizes) MB and their shards) go to $TMPDIR.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tiktoken
import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llmkit.data.bpe import EOT, BytePairTokenizer, train_bpe
from llmkit.data.prepare import BATCH_CHUNKS, CHUNK_BYTES, Span, read_chunks
from llmkit.data.tokenizer import CharTokenizer, save_tokenizer

REPO = Path(__file__).resolve().parent.parent
MB = 10**6
MIB = 1 << 20
SEED = 0
HF_CHUNK_BYTES = 64 * 1024
# HF and tiktoken get their 64 KiB chunks in batches of the same ~8 MB of text that llmkit encodes
# per call (BATCH_CHUNKS chunks of CHUNK_BYTES): so no contender holds more ids at once than another,
# and the rounds below interleave evenly.
HF_BATCH = BATCH_CHUNKS * CHUNK_BYTES // HF_CHUNK_BYTES
CHECK_CHUNKS = 4  # llmkit's chunks (about 1 MiB each) that are compared with HF's whole-text encode
GOAL_CHAR_MB_S = 100
GOAL_BPE_RATIO = 4
GOAL_PEAK_BYTES = 10**9

# Runs a command (argv[1:]) and prints its peak RSS in KiB and its wall time in seconds. Why a
# go-between: on Linux, exec carries the high-water RSS of the address space it replaces into the new
# program's ru_maxrss. A child started straight from this script replaces a copy of this script (fork)
# or this script's own address space (vfork), so it would report at least this script's size, which
# holds N MB of text and more. A child forked from this small go-between reports its own peak (or the
# go-between's few MiB, if larger). os.wait4 gives the usage of exactly that child, where
# getrusage(RUSAGE_CHILDREN) would be the maximum over every child waited for so far.
PEAK_RSS = """
import os, sys, time
start = time.perf_counter()
pid = os.spawnv(os.P_NOWAIT, sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
print(usage.ru_maxrss // 1024 if sys.platform == "darwin" else usage.ru_maxrss, seconds)  # macOS: bytes
sys.exit(os.waitstatus_to_exitcode(status))
"""

# nanoGPT's data/shakespeare_char/prepare.py, with its paths as arguments instead of a download.
NANOGPT_PREPARE = """
import os, pickle, sys
import numpy as np
input_file_path, out_dir = sys.argv[1], sys.argv[2]
with open(input_file_path, 'r') as f:
    data = f.read()
chars = sorted(list(set(data)))
vocab_size = len(chars)
stoi = { ch:i for i,ch in enumerate(chars) }
itos = { i:ch for i,ch in enumerate(chars) }
def encode(s):
    return [stoi[c] for c in s]
n = len(data)
train_data = data[:int(n*0.9)]
val_data = data[int(n*0.9):]
train_ids = encode(train_data)
val_ids = encode(val_data)
train_ids = np.array(train_ids, dtype=np.uint16)
val_ids = np.array(val_ids, dtype=np.uint16)
train_ids.tofile(os.path.join(out_dir, 'train.bin'))
val_ids.tofile(os.path.join(out_dir, 'val.bin'))
with open(os.path.join(out_dir, 'meta.pkl'), 'wb') as f:
    pickle.dump({'vocab_size': vocab_size, 'itos': itos, 'stoi': stoi}, f)
"""

# The memory peer: what a HF user writes when the corpus fits in memory.
# One contender encoding the benchmark text in a fresh process, as a user's own run would: the
# same chunks and batches as in the interleaved measurement, timed after a warm-up call. Prints
# seconds. (Measured in one process, llmkit's and tiktoken's encoders ran about a third slower on
# this machine than in a process of their own, and HF's did not; the cause was not found, so both
# measurements are reported.)
ENCODE_ALONE = """
import sys, time
from pathlib import Path
kind, tokenizer_path, text_path = sys.argv[1:4]
data = Path(text_path).read_bytes()
if kind == "llmkit":
    from llmkit.data.prepare import BATCH_CHUNKS, Span, read_chunks
    from llmkit.data.tokenizer import load_tokenizer
    tok = load_tokenizer(tokenizer_path)
    chunks = [t for _, t in read_chunks(Span(Path(text_path), 0, len(data)))]
    batches = [chunks[i:i + BATCH_CHUNKS] for i in range(0, len(chunks), BATCH_CHUNKS)]
    encode = tok.encode_batch
else:
    sys.path.insert(0, sys.argv[4])
    from bench_tokenize import HF_BATCH, HF_CHUNK_BYTES, line_chunks
    from tokenizers import Tokenizer
    hf = Tokenizer.from_file(tokenizer_path)
    chunks = line_chunks(data, HF_CHUNK_BYTES)
    batches = [chunks[i:i + HF_BATCH] for i in range(0, len(chunks), HF_BATCH)]
    encode = lambda texts: [e.ids for e in hf.encode_batch_fast(texts)]
encode([chunks[0][:10000]])
start = time.perf_counter()
for batch in batches:
    encode(batch)
print(time.perf_counter() - start)
"""

HF_IN_MEMORY = """
import sys
from tokenizers import Tokenizer
tokenizer = Tokenizer.from_file(sys.argv[1])
with open(sys.argv[2], encoding="utf-8") as f:
    text = f.read()
encodings = tokenizer.encode_batch(text.splitlines(keepends=True))
"""


@dataclass
class Row:
    what: str
    value: float
    unit: str  # MB/s (higher is better) or MiB (lower is better)
    peer: str = ""
    peer_value: float | None = None
    goal: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        """Above 1: llmkit is better."""
        if self.peer_value is None:
            return None
        return self.value / self.peer_value if self.unit == "MB/s" else self.peer_value / self.value

    def record(self) -> dict:
        ratio = self.ratio
        return {**asdict(self), "value": round(self.value, 3),
                "peer_value": None if self.peer_value is None else round(self.peer_value, 3),
                "ratio": None if ratio is None else round(ratio, 4)}


def write_repeated(sources: list[Path], size: int, path: Path) -> str:
    """The sources' text repeated to `size` bytes (less the last partial line), written to `path`."""
    data = b"".join(p.read_bytes() for p in sources)
    data = (data * -(-size // len(data)))[:size]
    data = data[: data.rfind(b"\n") + 1]
    path.write_bytes(data)
    return data.decode("utf-8")


def write_corpus(lines: list[bytes], size: int, path: Path) -> None:
    """Whole lines, reshuffled on every pass over them, until `size` bytes are written. Streamed: a
    corpus larger than memory never has to be held."""
    rng, lines, written = random.Random(SEED), list(lines), 0
    with open(path, "wb") as f:
        while written < size:
            rng.shuffle(lines)
            for line in lines:
                f.write(line)
                written += len(line)
                if written >= size:
                    break


def line_chunks(data: bytes, size: int) -> list[str]:
    """The text cut into pieces of at most `size` bytes, each ending at a line end (a longer line is
    one piece)."""
    chunks, start = [], 0
    while start < len(data):
        end = len(data) if start + size >= len(data) else data.rfind(b"\n", start, start + size) + 1
        if end <= start:
            end = data.find(b"\n", start + size) + 1 or len(data)
        chunks.append(data[start:end].decode("utf-8"))
        start = end
    return chunks


def batched(items: list, n: int) -> list[list]:
    return [items[i: i + n] for i in range(0, len(items), n)]


def run_measured(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of a command, run through the PEAK_RSS go-between."""
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, *command], capture_output=True, text=True,
                            cwd=REPO)
    if result.returncode != 0:
        sys.exit(f"this command failed (exit {result.returncode}): {shlex.join(command)}\n"
                 f"{result.stderr[-3000:]}")
    kib, seconds = result.stdout.split()[-2:]
    return float(seconds), int(kib) / 1024


def llmkit_tokenize(text: Path, out: Path, tokenizer: str, vocab_size: int) -> list[str]:
    command = [sys.executable, "-m", "llmkit", "tokenize", str(text), "--tokenizer", tokenizer,
               "--out", str(out)]
    return command + (["--vocab-size", str(vocab_size)] if tokenizer == "bpe" else [])


def time_calls(calls: dict[str, Callable[[], object]],
               repeats: int) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds per call and each call's last result. The calls alternate, and which goes
    first alternates too, so load from other processes falls on all alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    last: dict[str, object] = {}
    names = list(calls)
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            last.pop(name, None)  # never two results of one call in memory at once
            start = time.perf_counter()
            last[name] = calls[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, last


def bench_char(args: argparse.Namespace, tmp: Path) -> list[Row]:
    text_path = tmp / "shakespeare.txt"
    text = write_repeated([args.data / "tinyshakespeare" / "input.txt"], args.mb * MB, text_path)
    size = text_path.stat().st_size
    ours = CharTokenizer.train(text)
    # nanoGPT's vocabulary is the same sorted set of characters, so the ids must be the same too.
    stoi = {ch: i for i, ch in enumerate(sorted(set(text)))}
    seconds, ids = time_calls({"llmkit": lambda: ours.encode(text),
                               "nanoGPT": lambda: [stoi[c] for c in text]}, args.repeats)
    if not np.array_equal(ids["llmkit"], np.array(ids["nanoGPT"], dtype=np.int64)):
        sys.exit("char: llmkit's ids differ from nanoGPT's on the same text and vocabulary")
    del ids
    speed = {name: size / MB / s for name, s in seconds.items()}
    # What `llmkit tokenize` does: the same text in its 1 MiB chunks (cache-sized arrays).
    chunks = [t for _, t in read_chunks(Span(text_path, 0, size), anywhere=True)]
    chunked, _ = time_calls({"llmkit": lambda: ours.encode_batch(chunks)}, args.repeats)
    chunked_speed = size / MB / chunked["llmkit"]
    rows = [Row(f"char encode, {args.mb} MB in 1 MiB chunks (llmkit tokenize)", chunked_speed, "MB/s",
                "nanoGPT [stoi[c] for c in text]", speed["nanoGPT"], f">= {GOAL_CHAR_MB_S} MB/s",
                chunked_speed >= GOAL_CHAR_MB_S),
            Row(f"char encode, {args.mb} MB in one call (CharTokenizer.encode)", speed["llmkit"], "MB/s",
                "nanoGPT [stoi[c] for c in text]", speed["nanoGPT"])]

    # The whole commands, as a user runs them: start-up, reading, encoding, writing the shards.
    (tmp / "nanogpt").mkdir()
    wall, peak = {}, {}
    wall["llmkit"], peak["llmkit"] = run_measured(llmkit_tokenize(text_path, tmp / "char", "char",
                                                                  args.vocab_size))
    wall["nanoGPT"], peak["nanoGPT"] = run_measured([sys.executable, "-c", NANOGPT_PREPARE, str(text_path),
                                                     str(tmp / "nanogpt")])
    rows.append(Row("char: llmkit tokenize, whole command", size / MB / wall["llmkit"], "MB/s",
                    "nanoGPT shakespeare_char/prepare.py", size / MB / wall["nanoGPT"]))
    rows.append(Row("char: llmkit tokenize, peak RSS", peak["llmkit"], "MiB",
                    "nanoGPT shakespeare_char/prepare.py", peak["nanoGPT"]))
    return rows


def train_both(valid: Path, vocab_size: int) -> tuple[BytePairTokenizer, Tokenizer]:
    """llmkit's BPE and the same tokenizer in HF `tokenizers`, trained as train_bpe trains it."""
    # The chunks `llmkit tokenize` feeds train_bpe, given to both trainers.
    texts = [text for _, text in read_chunks(Span(valid, 0, valid.stat().st_size))]
    ours = train_bpe(texts, vocab_size)
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer)  # WikiText has no EOT markers for train_bpe to drop
    if BytePairTokenizer.from_hf(hf).tokens != ours.tokens:
        sys.exit("bpe: HF's training gave a different table than llmkit's train_bpe on the same text")
    return ours, hf


def bench_bpe_encode(ours: BytePairTokenizer, hf: Tokenizer, ours_batches: list[list[str]],
                     hf_batches: list[list[str]]) -> tuple[dict[str, float], int]:
    """Seconds per contender to encode the whole text, and llmkit's token count. Every contender
    ends with the ids in hand (llmkit numpy arrays, the others lists). The contenders take turns batch
    by batch, rotating who goes first, so load from other processes falls on all alike; HF's and
    tiktoken's ids for the same batch must agree."""
    encoding = ours._encoding  # the tiktoken table inside llmkit's tokenizer
    encoders = {
        "llmkit": (ours_batches, ours.encode_batch),
        "HF": (hf_batches, lambda texts: [e.ids for e in hf.encode_batch_fast(texts)]),
        "tiktoken": (hf_batches, lambda texts: [encoding.encode_ordinary(t) for t in texts]),
    }
    for batches, encode in encoders.values():  # thread pools, lazy regex set-up: not what is timed
        encode([batches[0][0][:10_000]])
    seconds, tokens = dict.fromkeys(encoders, 0.0), 0
    names = list(encoders)
    for i in range(max(len(batches) for batches, _ in encoders.values())):
        ids = {}
        for name in names[i % 3:] + names[: i % 3]:
            batches, encode = encoders[name]
            if i < len(batches):
                start = time.perf_counter()
                ids[name] = encode(batches[i])
                seconds[name] += time.perf_counter() - start
        if ids.get("HF") != ids.get("tiktoken"):
            sys.exit(f"bpe: HF's ids differ from tiktoken's on batch {i} (the same chunks, the same table)")
        tokens += sum(len(a) for a in ids.get("llmkit", []))
    return seconds, tokens


def check_same_ids(ours: BytePairTokenizer, hf: Tokenizer, chunks: list[str]) -> float:
    """llmkit's chunks are cut where they do not change the ids, and HF's chunks elsewhere, so the
    two are compared on the first chunks: llmkit's ids chunk by chunk, HF's for the whole text.
    Returns how many MB were compared; exits if the ids differ."""
    head = chunks[:CHECK_CHUNKS]
    ours_ids = np.concatenate(ours.encode_batch(head))
    hf_ids = np.array(hf.encode("".join(head)).ids, dtype=np.int64)
    if not np.array_equal(ours_ids, hf_ids):
        n = min(len(ours_ids), len(hf_ids))
        first = np.flatnonzero(ours_ids[:n] != hf_ids[:n])
        sys.exit(f"bpe: llmkit's ids differ from HF's from token {first[0] if len(first) else n} on "
                 f"({len(ours_ids):,} vs {len(hf_ids):,} tokens)")
    return sum(len(c.encode("utf-8")) for c in head) / MB


def bench_bpe(args: argparse.Namespace, tmp: Path,
              emit_note: Callable[[str, dict], None]) -> tuple[list[Row], Path]:
    wiki = args.data / "wikitext-2"
    ours, hf = train_both(wiki / "valid.txt", args.vocab_size)
    text_path = tmp / "wikitext.txt"
    write_repeated([wiki / "valid.txt", wiki / "test.txt"], args.mb * MB, text_path)
    size = text_path.stat().st_size
    ours_chunks = [text for _, text in read_chunks(Span(text_path, 0, size))]
    hf_chunks = line_chunks(text_path.read_bytes(), HF_CHUNK_BYTES)
    checked_mb = check_same_ids(ours, hf, ours_chunks)
    seconds, tokens = bench_bpe_encode(ours, hf, batched(ours_chunks, BATCH_CHUNKS),
                                       batched(hf_chunks, HF_BATCH))
    emit_note(f"bpe ids identical: llmkit (its chunks) = HF (whole text) on the first {checked_mb:.1f} MB; "
              f"HF = tiktoken on all {size / MB:.1f} MB (the same 64 KiB chunks); "
              f"{tokens:,} tokens, {size / tokens:.2f} bytes/token",
              {"check": "bpe ids", "identical": True, "llmkit_vs_hf_mb": round(checked_mb, 2),
               "hf_vs_tiktoken_mb": round(size / MB, 2), "tokens": tokens})
    speed = {name: size / MB / s for name, s in seconds.items()}
    del ours_chunks, hf_chunks
    threads = os.cpu_count()
    rows = [Row(f"bpe encode, {args.mb} MB, interleaved in one process: llmkit, {threads} thr", speed["llmkit"], "MB/s",
                f"HF encode_batch_fast, {threads} thr", speed["HF"], f">= {GOAL_BPE_RATIO}x HF",
                speed["llmkit"] >= GOAL_BPE_RATIO * speed["HF"]),
            Row(f"bpe encode, {args.mb} MB: tiktoken, 1 thread", speed["tiktoken"], "MB/s",
                f"HF encode_batch_fast, {threads} thr", speed["HF"])]

    # The same two encoders again, each alone in a fresh process (see ENCODE_ALONE).
    save_tokenizer(ours, tmp / "llmkit_tokenizer.json")
    hf.save(str(tmp / "hf_tokenizer.json"))
    alone: dict[str, list[float]] = {"llmkit": [], "HF": []}
    for i in range(args.repeats):
        for name in (["llmkit", "HF"] if i % 2 == 0 else ["HF", "llmkit"]):
            path = tmp / ("llmkit_tokenizer.json" if name == "llmkit" else "hf_tokenizer.json")
            result = subprocess.run([sys.executable, "-c", ENCODE_ALONE, name, str(path), str(text_path),
                                     str(REPO / "scripts")], capture_output=True, text=True, cwd=REPO)
            if result.returncode != 0:
                sys.exit(f"bpe: the {name} encoder failed in its own process:\n{result.stderr[-2000:]}")
            alone[name].append(float(result.stdout.split()[-1]))
    alone_speed = {name: size / MB / statistics.median(t) for name, t in alone.items()}
    rows.append(Row(f"bpe encode, {args.mb} MB, each in its own process: llmkit", alone_speed["llmkit"], "MB/s",
                    "HF encode_batch_fast, own process", alone_speed["HF"], f">= {GOAL_BPE_RATIO}x HF",
                    alone_speed["llmkit"] >= GOAL_BPE_RATIO * alone_speed["HF"]))

    wall, peak = run_measured(llmkit_tokenize(text_path, tmp / "bpe", "bpe", args.vocab_size))
    rows.append(Row("bpe: llmkit tokenize, whole command (trains)", size / MB / wall, "MB/s"))
    rows.append(Row("bpe: llmkit tokenize, peak RSS", peak, "MiB"))
    return rows, text_path  # hf_tokenizer.json stays for the memory peer


def bench_rss(args: argparse.Namespace, tmp: Path, text_path: Path) -> list[Row]:
    wiki = args.data / "wikitext-2"
    lines = [line for name in ("valid.txt", "test.txt")
             for line in (wiki / name).read_bytes().splitlines(keepends=True)]
    _, peer = run_measured([sys.executable, "-c", HF_IN_MEMORY, str(tmp / "hf_tokenizer.json"),
                            str(text_path)])
    peer_name = f"HF encode_batch, {args.mb} MB in memory"
    rows, peaks = [], {}
    for size in args.rss_sizes:
        corpus, out = tmp / f"corpus_{size}.txt", tmp / f"corpus_{size}"
        write_corpus(lines, size * MB, corpus)
        # A corpus of repeated lines has few distinct words, so the BPE trainer's word counts stay
        # small here; on real text of this size they grow with the vocabulary of the text.
        _, peaks[size] = run_measured(llmkit_tokenize(corpus, out, "bpe", args.vocab_size))
        corpus.unlink()
        shutil.rmtree(out)
        rows.append(Row(f"bpe: llmkit tokenize, {size} MB corpus, peak RSS", peaks[size], "MiB", peer_name,
                        peer, "< 1 GB", peaks[size] * MIB < GOAL_PEAK_BYTES))
    if len(peaks) > 1:
        small, large = min(peaks), max(peaks)
        rows.append(Row(f"bpe: peak RSS growth, {small} -> {large} MB corpus", peaks[large] - peaks[small],
                        "MiB"))
    return rows


def machine() -> dict:
    cpu = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    # The load when the run starts: other work on the machine slows every contender.
    return {"cpu": cpu, "cores": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2),
            "python": sys.version.split()[0], "numpy": np.__version__, "tokenizers": tokenizers.__version__,
            "tiktoken": tiktoken.__version__,
            "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "unset (on)")}


def parse_args() -> argparse.Namespace:
    default_data = os.environ.get("LLMKIT_DATA_MIRROR") or str(REPO.parent / "shared" / "data")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mb", type=int, default=100, help="MB of text for the char and bpe speed measurements")
    p.add_argument("--vocab-size", type=int, default=8192, help="tokens of the bpe tokenizer")
    p.add_argument("--rss-sizes", default="250,1000", help="corpus sizes in MB for the peak-memory runs")
    p.add_argument("--skip-rss", action="store_true", help="skip the peak-memory runs on generated corpora")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per contender of the char encode")
    p.add_argument("--data", type=Path, default=Path(default_data),
                   help="data mirror holding tinyshakespeare/ and wikitext-2/ "
                   "(default: $LLMKIT_DATA_MIRROR, else ../shared/data)")
    p.add_argument("--json", action="store_true", help="print one JSON object per result, nothing else")
    args = p.parse_args()
    try:
        args.rss_sizes = sorted({int(s) for s in args.rss_sizes.split(",") if s.strip()})
    except ValueError:
        p.error(f"--rss-sizes: comma-separated MB, e.g. 250,1000 (got {args.rss_sizes!r})")
    if min(args.mb, args.repeats, *args.rss_sizes) < 1 or args.vocab_size < 258:
        p.error("--mb, --repeats and --rss-sizes must be at least 1, --vocab-size at least 258")
    needed = [args.data / "tinyshakespeare" / "input.txt", args.data / "wikitext-2" / "valid.txt",
              args.data / "wikitext-2" / "test.txt"]
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        p.error(f"data files missing: {', '.join(missing)} (point --data or $LLMKIT_DATA_MIRROR at the mirror)")
    return args


def main() -> None:
    args = parse_args()
    command = shlex.join(sys.orig_argv)  # the interpreter too, so the line can be pasted back
    info = machine()
    settings = {"mb": args.mb, "vocab_size": args.vocab_size, "repeats": args.repeats}

    def emit(row: Row) -> None:
        if args.json:
            print(json.dumps({**row.record(), **settings, **info, "command": command}), flush=True)
            return
        ratio = row.ratio
        goal = f"{row.goal}: {'yes' if row.met else 'NO'}" if row.goal else ""
        print(f"{row.what:<62}{row.value:>9.1f} {row.unit:<5} {row.peer:<38}"
              f"{'' if row.peer_value is None else f'{row.peer_value:.1f}':>9}"
              f"{'' if ratio is None else f'{ratio:.2f}':>8}  {goal}", flush=True)

    notes: list[str] = []

    def emit_note(text: str, record: dict) -> None:
        if args.json:
            print(json.dumps({**record, **settings, **info, "command": command}), flush=True)
        else:
            notes.append(text)  # after the table, so its rows stay together

    if not args.json:
        print(f"command: {command}")
        print("machine: " + " | ".join(f"{k} {v}" for k, v in info.items()))
        print(f"texts:   char: Tiny Shakespeare repeated to {args.mb} MB | bpe: WikiText-2 valid+test repeated "
              f"to {args.mb} MB, vocab {args.vocab_size:,} trained on WikiText-2 valid")
        print(f"\n{'what':<62}{'value':>9} {'unit':<5} {'peer':<38}{'value':>9}{'x peer':>8}  goal")
    with tempfile.TemporaryDirectory(prefix="bench_tokenize-") as tmp:
        tmp = Path(tmp)
        for row in bench_char(args, tmp):
            emit(row)
        rows, text_path = bench_bpe(args, tmp, emit_note)
        for row in rows:
            emit(row)
        if not args.skip_rss:
            for row in bench_rss(args, tmp, text_path):
                emit(row)
    for note in notes:
        print(f"\n{note}")


if __name__ == "__main__":
    main()
