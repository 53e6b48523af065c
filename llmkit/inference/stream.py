"""Token ids to text as they arrive, with stop strings."""

from __future__ import annotations

from llmkit.data.tokenizer import Tokenizer


class StreamDecoder:
    """Turns ids into text as they arrive. It holds back a partial character (byte-level
    tokenizers can split one across tokens) and any tail that could be the start of a stop
    string; when a stop string appears, the text ends just before it and `stopped` is set."""

    def __init__(self, tokenizer: Tokenizer, stops: tuple[str, ...] = ()):
        self.tokenizer, self.stops = tokenizer, tuple(s for s in stops if s)
        self.ids: list[int] = []
        self.emitted, self.stopped = 0, False

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self.tokenizer.decode(self.ids)
        found = [i for i in (text.find(s, max(0, self.emitted - len(s))) for s in self.stops) if i >= 0]
        if found:
            self.stopped = True
            return self._emit(text, min(found))
        if text.endswith("\ufffd"):
            return ""
        hold = max((len(s) - 1 for s in self.stops), default=0)
        return self._emit(text, len(text) - hold)

    def flush(self) -> str:
        """What is still held back, at the end of generation (nothing after a stop string)."""
        return "" if self.stopped else self._emit(self.tokenizer.decode(self.ids), None)

    def _emit(self, text: str, end: int | None) -> str:
        end = len(text) if end is None else end
        if end <= self.emitted:
            return ""
        new, self.emitted = text[self.emitted : end], end
        return new
