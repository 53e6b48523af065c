"""What the fault tests (tests/test_faults_*.py) share: how a refusal must look, and a bound on time."""

from __future__ import annotations

import contextlib
import re
import signal
import time
from pathlib import Path


def refused(result, *words):
    """Exit 2, no traceback, and each word in stderr; returns stderr's lines."""
    assert result.code == 2, (result.code, result.err[-2000:])
    assert "Traceback" not in result.err + result.out, result.err[-3000:]
    for word in words:
        assert word in result.err, (word, result.err[-2000:])
    return result.err.strip().splitlines()


def clean(result) -> bool:
    return "Traceback" not in result.err and "Traceback" not in result.out


def plain(text: str) -> str:
    """Text with option spellings and rich's box drawing folded away: `--top-p`, `top_p` and
    `top-p` all read `top p`, however a panel wraps them."""
    return re.sub(r"[\s│╭╮╰╯─_-]+", " ", text).lower()


def nothing_built(workdir: Path) -> None:
    assert not (workdir / "runs").exists() and not (workdir / "data").exists(), list(workdir.iterdir())


class Hung(BaseException):  # not an Exception (nor an OSError): nothing in llmkit can swallow it
    pass


@contextlib.contextmanager
def within(seconds: float):
    """Fail if the block takes longer than `seconds`; interrupt it if it hangs."""
    def alarm(signum, frame):
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - start < seconds
