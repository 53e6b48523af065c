"""Scoring generated answers against references: exact match, ROUGE-L, and an optional judge.

- Exact match: the answer equals the reference after lower-casing, collapsing whitespace and
  dropping the punctuation at either end ("The capital is Paris." = "the capital is paris").
- ROUGE-L (Lin, 2004): with the words of both as sequences (lower-cased, \\w+ runs), the longest
  common subsequence L gives precision L / |answer|, recall L / |reference| and their harmonic
  mean F1, which is reported: it credits the right words in the right order even when phrasing
  differs, and needs no model, so the scores are the same on every machine.
- Judge: a chat model behind any OpenAI-compatible endpoint (`POST {url}/chat/completions`) is
  asked for a 0-100 score per answer, as LLMs-from-scratch asks Llama 3 through Ollama.
"""

from __future__ import annotations

import json
import math
import re
import string
import urllib.error
import urllib.request
from dataclasses import dataclass

from llmkit.errors import LlmkitError
from llmkit.tasks.prompts import format_prompt

MAX_REPLY_BYTES = 1 << 20  # a score is a few characters; a reply this long is not one


def normalize(text: str) -> str:
    return " ".join(text.lower().split()).strip(string.punctuation + " ")


def exact_match(answer: str, reference: str) -> bool:
    return normalize(answer) == normalize(reference)


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence, by dynamic programming over one row at a time."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F1 of the answer's words against the reference's."""
    a, r = words(answer), words(reference)
    if not a or not r:
        return float(a == r)
    common = lcs_length(a, r)
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class Judge:
    url: str  # the endpoint's base, e.g. http://localhost:11434/v1 (Ollama) or https://api.openai.com/v1
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0

    def score(self, entry: dict) -> int:
        """The judge's score of one answer (refused when its reply is not one)."""
        return parse_score(self.reply(entry))

    @staticmethod
    def question(entry: dict) -> str:
        """The judge's question about `entry`'s model_response."""
        return (f"Given the input `{format_prompt(entry)}` and correct output `{entry['output']}`, "
                f"score the model response `{entry['model_response']}` on a scale from 0 to 100, "
                "where 100 is the best score. Respond with the integer number only.")

    def reply(self, entry: dict) -> str:
        """What the judge answers to the question about `entry`, at temperature 0."""
        body = {"model": self.model, "temperature": 0, "messages": [{"role": "user", "content": self.question(entry)}]}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url.rstrip("/") + "/chat/completions",
                                         json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = response.read(MAX_REPLY_BYTES + 1)
            if len(body) > MAX_REPLY_BYTES:
                raise ValueError(f"a reply of more than {MAX_REPLY_BYTES:,} bytes")
            reply = json.loads(body)["choices"][0]["message"]["content"]
            if not isinstance(reply, str):
                raise TypeError("a reply whose content is not text")
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as e:
            raise LlmkitError(f"the judge at {self.url} did not answer: {str(e)[:200]}",
                              hint="check --judge-url (the base ending in /v1) and --judge-model") from None
        return reply


def parse_score(reply: str) -> int:
    """The judge's score: the first number in its reply, which must be a whole number from 0 to
    100 (`85`, `Score: 85`, `85.0`); anything else (`1e309`, `-3`, `150`, no number) is refused."""
    number = re.search(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", reply)
    value = float(number.group()) if number else math.nan
    if not (math.isfinite(value) and value.is_integer() and 0 <= value <= 100):
        raise LlmkitError(f"the judge answered {reply[:80]!r}, not a score from 0 to 100")
    return int(value)


def score_responses(records: list[dict], judge: Judge | None = None) -> dict:
    """Mean scores over records holding `output` (the reference) and `model_response`; each
    record gets its own scores added."""
    for record in records:
        record["exact_match"] = exact_match(record["model_response"], record["output"])
        record["rouge_l"] = rouge_l(record["model_response"], record["output"])
        if judge is not None:  # a reply that is no score is kept, marked, and left out of the mean
            reply = judge.reply(record)
            record["judge_reply"] = reply[:2000]
            try:
                record["judge_score"] = parse_score(reply)
            except LlmkitError:
                record["judge_score"] = None
    n = len(records)
    result = {"exact_match": sum(r["exact_match"] for r in records) / n,
              "rouge_l": sum(r["rouge_l"] for r in records) / n}
    if judge is not None:
        scores = [r["judge_score"] for r in records if r["judge_score"] is not None]
        if scores:
            result["judge_score"] = sum(scores) / len(scores)
        result["judge"], result["judge_scored"] = judge.model, len(scores)
    return result
