"""Chat: a conversation turned into the one text a chat model was trained to continue.

A chat model is still a language model; what makes it answer is the format of its training
conversations, which ships with it as a Jinja template (`tokenizer.chat_template`). SmolLM2's is
ChatML:

    <|im_start|>system
    You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
    <|im_start|>user
    What is the capital of France?<|im_end|>
    <|im_start|>assistant

The model continues after `assistant\\n` and ends its turn with `<|im_end|>`, its eos token: that
is where generation stops (stop reason `eos`). The template is rendered as transformers'
`apply_chat_template` renders it — a sandboxed Jinja environment with trim_blocks and
lstrip_blocks, its `tojson`, `raise_exception` and `strftime_now` — so the text, and the ids, are
the ones the model was trained on. Templates come from model files, so they run sandboxed.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from datetime import datetime

from llmkit.errors import LlmkitError

ROLES = ("system", "user", "assistant")


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateError as e:
        raise LlmkitError(f"the model's chat template does not compile: {str(e)[:200]}") from None


def render(template: str, messages: list[dict], add_generation_prompt: bool = True, **special_tokens) -> str:
    """The text of a conversation, as the template writes it; with `add_generation_prompt` it
    ends where the assistant's next turn begins."""
    import jinja2

    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise LlmkitError(f"a chat message is {{'role': one of {', '.join(ROLES)}, 'content': text}}, "
                              f"got {str(message)[:80]}")
    try:
        return _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         **special_tokens)
    except jinja2.exceptions.TemplateError as e:
        raise LlmkitError(f"the model's chat template refused the conversation: {str(e)[:200]}") from None


def chat_template_of(tokenizer, path) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise LlmkitError(f"{path} has no chat template: it was not trained to chat",
                          hint="continue text instead: llmkit generate MODEL --prompt TEXT (without --chat)")
    return template


@dataclass
class Conversation:
    """The turns so far (a system message, if any, first); `prompt()` is the text to continue."""

    tokenizer: object
    path: object = None
    system: str | None = None
    turns: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.template = chat_template_of(self.tokenizer, self.path)

    @property
    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def ask(self, text: str) -> str:
        """Add the user's turn; returns the text the model continues to answer it."""
        self.turns.append({"role": "user", "content": text})
        return self.prompt()

    def prompt(self, room: int | None = None) -> str:
        """The conversation's text, ending where the assistant answers. With `room` (tokens), the
        oldest turns are dropped until it fits: a long chat forgets its beginning, not its end
        (the system message stays)."""
        while True:
            text = render(self.template, self.messages, add_generation_prompt=True, **special_tokens(self.tokenizer))
            if room is None or len(self.turns) <= 1 or len(self.tokenizer.encode(text)) <= room:
                return text
            del self.turns[: 2 if len(self.turns) > 2 else 1]

    def answered(self, text: str) -> None:
        self.turns.append({"role": "assistant", "content": text})

    def reset(self) -> None:
        self.turns.clear()


def special_tokens(tokenizer) -> dict:
    """The special tokens templates may use by name (bos_token, eos_token), as transformers passes them."""
    names = {}
    for key, attr in (("bos_token", "bos_id"), ("eos_token", "eos_id"), ("pad_token", "pad_id")):
        token_id = getattr(tokenizer, attr, None)
        if token_id is not None and hasattr(tokenizer, "token"):
            names[key] = tokenizer.token(token_id)
    return names


def reply(lm, conversation: Conversation, settings, seed: int | None = None):
    """The model's next turn as a Generation (llmkit/inference/generation.py): iterate it for the
    answer's pieces; call `conversation.answered(text)` with what was kept. The prompt leaves
    room for `settings.max_new_tokens` in the context."""
    from llmkit.inference.generation import Generation

    room = max(1, lm.config.block_size - settings.max_new_tokens)
    return Generation(lm.model, lm.tokenizer, [conversation.prompt(room)], settings, seed)
