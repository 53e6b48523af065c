"""The OpenAI HTTP API's request bodies and replies, as far as llmkit serves them.

Bodies are pydantic models: a wrong type, a number out of range, NaN or infinity is a 400 with
the field named, before any work. Fields the API defines and llmkit does not implement
(`logprobs`, `tools`, `presence_penalty`, ...) are refused when set to anything but their
default, so a client never silently gets less than it asked for; fields the API does not define
are ignored, as OpenAI's own server does. Beyond the API, `top_k`, `min_p` and
`repetition_penalty` are taken too (as vLLM and llama.cpp's server take them), so every sampling
setting of `llmkit generate` can be asked for.

Replies (`Reply.whole`, and `Reply.chunk` / `usage_chunk` for streaming) are the shapes
the official clients parse: `choices[i].message.content` or `.text`, `finish_reason` "stop" or
"length", and `usage` token counts.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# What finish_reason a row's llmkit stop reason (llmkit/inference/generation.py) is in the API.
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "context": "length"}

# API fields llmkit does not implement, and the value that means "not used".
UNSUPPORTED = {"logprobs": (None, False), "top_logprobs": (None, 0), "tools": (None, []), "tool_choice": (None, "none"),
               "functions": (None, []), "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
               "logit_bias": (None, {}), "best_of": (None, 1), "echo": (None, False), "suffix": (None, ""),
               "response_format": (None, {"type": "text"}), "audio": (None,), "prediction": (None,)}

MAX_STOPS, MAX_STOP_CHARS, MAX_PROMPTS = 16, 1000, 64
Seed = Annotated[int, Field(ge=0, lt=2**63)]


class Body(BaseModel):
    """What chat and completion requests share: the model, sampling, stops, n, stream."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = Field(max_length=1000)
    max_tokens: int | None = Field(None, ge=1, lt=2**31)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, lt=2**31)
    min_p: float | None = Field(None, gt=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=100)
    stop: str | list[str] | None = None
    seed: Seed | None = None
    n: int = Field(1, ge=1, le=4096)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"at most {MAX_STOPS} stop strings of at most {MAX_STOP_CHARS} characters each")
        return stops

    def unsupported(self) -> str | None:
        """The first API field set that llmkit does not implement, if any."""
        for name, defaults in UNSUPPORTED.items():
            if name in (self.model_extra or {}) and self.model_extra[name] not in defaults:
                return name
        return None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_dict(self) -> dict:
        """The message as chat templates take it: a role and a text ("developer" is the API's
        newer name for the system role)."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatBody(Body):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, lt=2**31)  # the API's newer name for max_tokens


class CompletionBody(Body):
    prompt: str | list[str] = Field(...)

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, prompt):
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not 1 <= len(prompts) <= MAX_PROMPTS:
            raise ValueError(f"give 1 to {MAX_PROMPTS} prompts")
        return prompts


Body.model_rebuild()


def error(message: str, kind: str = "invalid_request_error", code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Reply:
    """One reply's identity, shared by all its chunks: id, creation time, model."""

    def __init__(self, model: str, chat: bool):
        self.chat, self.model = chat, model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, texts: list[str], finishes: list[str | None], usage: dict) -> dict:
        """The non-streamed reply: every choice's text and finish reason, and the usage."""
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                        "logprobs": None} for i, (text, finish) in enumerate(zip(texts, finishes))]
            return {**self._head("chat.completion"), "choices": choices, "usage": usage}
        choices = [{"index": i, "text": text, "finish_reason": finish, "logprobs": None}
                   for i, (text, finish) in enumerate(zip(texts, finishes))]
        return {**self._head("text_completion"), "choices": choices, "usage": usage}

    def chunk(self, index: int, text: str | None = None, finish: str | None = None, role: bool = False) -> dict:
        """A streamed piece of choice `index`: its text, or its end (`finish`); for chat the first
        chunk of a choice carries the assistant role."""
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, usage: dict) -> dict:
        """The last chunk with stream_options.include_usage: no choices, the usage."""
        return {**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": [],
                "usage": usage}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
