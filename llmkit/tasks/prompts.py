"""How an instruction entry becomes the text a model reads: the Alpaca prompt format.

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction:
    {instruction}

    ### Input:            <- only when the entry has an input
    {input}

    ### Response:

Instruction tuning trains on it (llmkit/tasks/instruct.py) and a judge reads it
(llmkit/tasks/scoring.py).
"""

from __future__ import annotations

PREAMBLE = ("Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.")


def format_prompt(entry: dict) -> str:
    """The Alpaca prompt of an entry, ending where the response begins."""
    text = f"{PREAMBLE}\n\n### Instruction:\n{entry['instruction']}"
    if entry.get("input"):
        text += f"\n\n### Input:\n{entry['input']}"
    return text + "\n\n### Response:\n"
