"""How an instruction entry becomes the text a model reads, in one of two formats.

alpaca: the format LLMs-from-scratch trains GPT-2 on, for models that were never taught to chat:

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction:
    {instruction}

    ### Input:            <- only when the entry has an input
    {input}

    ### Response:
    {output}<|endoftext|>

chat: the model's own chat template (llmkit/inference/chat.py), the entry as one user turn
(`instruction`, a blank line, `input`) and the output as the assistant's answer. A chat model has
been trained on exactly that layout, so finetuning it in its own format builds on what it knows
instead of teaching it a second one; SmolLM2's reads

    <|im_start|>system
    You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
    <|im_start|>user
    {instruction}

    {input}<|im_end|>
    <|im_start|>assistant
    {output}<|im_end|>

In both the response ends with the token generation stops at (the tokenizer's eot_id), which the
model must learn to write. `auto` picks chat for a tokenizer with a template, else alpaca.
Instruction tuning trains on these (llmkit/tasks/instruct.py); a judge reads the Alpaca prompt
(llmkit/tasks/scoring.py), whatever the model was trained with.
"""

from __future__ import annotations

from llmkit.errors import LlmkitError

FORMATS = ("auto", "alpaca", "chat")
PREAMBLE = ("Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.")


def format_prompt(entry: dict) -> str:
    """The Alpaca prompt of an entry, ending where the response begins."""
    text = f"{PREAMBLE}\n\n### Instruction:\n{entry['instruction']}"
    if entry.get("input"):
        text += f"\n\n### Input:\n{entry['input']}"
    return text + "\n\n### Response:\n"


def user_turn(entry: dict) -> str:
    """The entry as a chat message: the instruction, then its input after a blank line."""
    return f"{entry['instruction']}\n\n{entry['input']}" if entry.get("input") else entry["instruction"]


class PromptFormat:
    def __init__(self, name: str, tokenizer):
        """`name`: auto, alpaca or chat; `tokenizer` the model's (chat needs its template and
        every format its eot_id)."""
        if name not in FORMATS:
            raise LlmkitError(f"data.prompt_format must be {', '.join(FORMATS[:-1])} or {FORMATS[-1]}, got {name!r}")
        template = getattr(tokenizer, "chat_template", None)
        if name == "chat" and not template:
            raise LlmkitError("data.prompt_format=chat needs a tokenizer with a chat template, and this one has none",
                              hint="--prompt-format alpaca")
        self.eot = getattr(tokenizer, "eot_id", None)
        if self.eot is None:
            raise LlmkitError("instruction tuning needs a tokenizer with an end-of-text token (bpe, gpt2 or a model's own)")
        self.name = ("chat" if template else "alpaca") if name == "auto" else name
        self.tokenizer, self.template = tokenizer, template

    def prompt(self, entry: dict) -> str:
        """The text before the response: what the model is given to answer."""
        if self.name == "alpaca":
            return format_prompt(entry)
        return self._render([{"role": "user", "content": user_turn(entry)}], add_generation_prompt=True)

    def response_ids(self, entry: dict, prompt: str | None = None) -> list[int]:
        """The ids the model learns to write after the prompt (`prompt(entry)`, if already made):
        the output and the end token."""
        if self.name == "alpaca":
            return [*self.tokenizer.encode(entry["output"]), self.eot]
        prompt = self.prompt(entry) if prompt is None else prompt
        whole = self._render([{"role": "user", "content": user_turn(entry)},
                              {"role": "assistant", "content": entry["output"]}], add_generation_prompt=False)
        if not whole.startswith(prompt):
            raise LlmkitError("the chat template writes a conversation that does not begin with its own prompt; "
                              "it cannot be used to train answers", hint="--prompt-format alpaca")
        ids = list(self.tokenizer.encode(whole[len(prompt):]))
        # Up to the end of the turn, inclusive: what follows it (a newline) is never generated.
        return ids[: ids.index(self.eot) + 1] if self.eot in ids else [*ids, self.eot]

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        from llmkit.inference.chat import render, special_tokens

        return render(self.template, messages, add_generation_prompt, **special_tokens(self.tokenizer))
