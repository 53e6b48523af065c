"""A pretrained model's own tokenizer, run by Hugging Face `tokenizers`: the `hf` kind.

Real models come with their tokenizer: a `tokenizer.json` in a Hugging Face directory, or the
`tokenizer.ggml.*` metadata of a GGUF file (the tokens, the merges, the pre-tokenizer's name, the
special tokens). Both become one `tokenizers.Tokenizer` — byte-level BPE for the Llama-family
models llmkit reads — plus what generation and chat need:

    bos_id, eos_id, pad_id   the ids the model was trained with (eos ends a chat turn)
    end_ids                  every id that ends a text: eos, and <|endoftext|>, <|im_end|>, ...
    chat_template            the Jinja template of the model's chat format (llmkit/inference/chat.py)

Special tokens written in a text (`<|im_start|>`) are matched whole, as transformers does, so a
rendered chat template tokenizes to the ids the model was trained on.

Pre-tokenizers from GGUF (`tokenizer.ggml.pre`) are llama.cpp's: its regexes, applied in order
(llama-vocab.cpp). SmolLM2's `smollm` first cuts every digit off on its own, then applies GPT-2's
pattern, as its tokenizer.json does (Digits(individual_digits) + ByteLevel).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llmkit.errors import LlmkitError
from llmkit.files import read_json

GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> the regexes llama.cpp applies, in order (each splits what the last left).
PRE_TOKENIZERS = {
    "default": (GPT2_SPLIT,), "gpt2": (GPT2_SPLIT,), "gpt-2": (GPT2_SPLIT,), "mpt": (GPT2_SPLIT,),
    "olmo": (GPT2_SPLIT,),
    "smollm": (r"\p{N}", GPT2_SPLIT), "starcoder": (r"\p{N}", GPT2_SPLIT), "refact": (r"\p{N}", GPT2_SPLIT),
    "codeshell": (r"\p{N}", GPT2_SPLIT), "command-r": (r"\p{N}", GPT2_SPLIT),
    "llama3": (LLAMA3_SPLIT,), "llama-bpe": (LLAMA3_SPLIT,), "llama-v3": (LLAMA3_SPLIT,),
    "smaug-bpe": (LLAMA3_SPLIT,), "dbrx": (LLAMA3_SPLIT,),
}
# Special tokens that end a text, whichever the model calls its eos.
END_TOKENS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>", "</s>", "<|eom_id|>")
GGUF_CONTROL, GGUF_USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


class HFTokenizer:
    kind = "hf"

    def __init__(self, tokenizer, bos_id: int | None = None, eos_id: int | None = None, pad_id: int | None = None,
                 chat_template: str | None = None, vocab_size: int | None = None):
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.chat_template = chat_template
        self._vocab_size = vocab_size or tokenizer.get_vocab_size(with_added_tokens=True)
        specials = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        self.end_ids = frozenset({i for name, i in specials.items() if name in END_TOKENS}
                                 | ({eos_id} if eos_id is not None else set()))
        self.eot_id = eos_id  # what generation stops at (llmkit/inference/generation.py)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def token(self, id: int) -> str | None:
        return self.tokenizer.id_to_token(int(id))

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.uint32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """On every core: `tokenizers` batches in Rust threads."""
        return [np.asarray(e.ids, dtype=np.uint32) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "json": self.tokenizer.to_str(), "bos_id": self.bos_id, "eos_id": self.eos_id,
                "pad_id": self.pad_id, "chat_template": self.chat_template, "vocab_size": self._vocab_size}

    @classmethod
    def from_dict(cls, spec: dict) -> HFTokenizer:
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_str(spec["json"])
        except Exception as e:  # tokenizers raises its own Exception type for a bad description
            raise LlmkitError(f"unreadable tokenizer description: {str(e)[:200]}") from None
        return cls(tokenizer, spec.get("bos_id"), spec.get("eos_id"), spec.get("pad_id"), spec.get("chat_template"),
                   spec.get("vocab_size"))

    # --- from the files models ship with -------------------------------------------------------------

    @classmethod
    def from_directory(cls, directory: Path, config: dict) -> HFTokenizer:
        """tokenizer.json (+ tokenizer_config.json for the chat template and special tokens) of a
        Hugging Face directory; `config` is its config.json (bos/eos/pad ids, vocab_size)."""
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        except Exception as e:
            raise LlmkitError(f"cannot read {directory / 'tokenizer.json'}: {str(e)[:200]}") from None
        settings = read_json(directory / "tokenizer_config.json") if (directory / "tokenizer_config.json").is_file() else {}

        def token_id(key: str, fallback: int | None) -> int | None:
            token = settings.get(key)
            token = token.get("content") if isinstance(token, dict) else token
            found = tokenizer.token_to_id(token) if isinstance(token, str) else None
            return found if found is not None else fallback

        eos = config.get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) and eos else eos
        template = settings.get("chat_template")
        if isinstance(template, list):  # several named templates: the default one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        return cls(tokenizer, token_id("bos_token", config.get("bos_token_id")), token_id("eos_token", eos),
                   token_id("pad_token", config.get("pad_token_id")), template if isinstance(template, str) else None,
                   config.get("vocab_size"))

    @classmethod
    def from_gguf(cls, fields: dict, vocab_size: int | None = None) -> HFTokenizer:
        """The tokenizer a GGUF file's `tokenizer.*` metadata describes (byte-level BPE only)."""
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

        kind = fields.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise LlmkitError(f"this GGUF's tokenizer is {kind!r}: llmkit reads byte-level BPE tokenizers "
                              "(tokenizer.ggml.model gpt2) only")
        pre = fields.get("tokenizer.ggml.pre", "default")
        if pre not in PRE_TOKENIZERS:
            raise LlmkitError(f"this GGUF's pre-tokenizer {pre!r} is not one llmkit knows",
                              hint=f"known: {', '.join(sorted(PRE_TOKENIZERS))}")
        tokens, merges = fields["tokenizer.ggml.tokens"], fields.get("tokenizer.ggml.merges", [])
        types = fields.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        vocab = {token: i for i, token in enumerate(tokens)}
        bpe = models.BPE(vocab, [tuple(m.split(" ", 1)) for m in merges], ignore_merges=False)
        tokenizer = Tokenizer(bpe)
        splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZERS[pre]]
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([*splits, pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                               use_regex=False)])
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                      for t, kind_ in zip(tokens, types) if kind_ == GGUF_CONTROL])
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                              for t, kind_ in zip(tokens, types) if kind_ == GGUF_USER_DEFINED])
        return cls(tokenizer, fields.get("tokenizer.ggml.bos_token_id"), fields.get("tokenizer.ggml.eos_token_id"),
                   fields.get("tokenizer.ggml.padding_token_id"), fields.get("tokenizer.chat_template"),
                   vocab_size or len(tokens))

    def gguf_fields(self) -> dict:
        """The `tokenizer.*` metadata a GGUF file holds for this tokenizer (the inverse of from_gguf)."""
        model = json.loads(self.tokenizer.to_str())["model"]
        if model.get("type") != "BPE":
            raise LlmkitError(f"a {model.get('type')} tokenizer has no GGUF form here (byte-level BPE only)")
        tokens = [None] * self.tokenizer.get_vocab_size(with_added_tokens=True)
        for token, i in self.tokenizer.get_vocab(with_added_tokens=True).items():
            tokens[i] = token
        added = {i: t for i, t in self.tokenizer.get_added_tokens_decoder().items()}
        types = [(GGUF_CONTROL if added[i].special else GGUF_USER_DEFINED) if i in added else 1 for i in range(len(tokens))]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        return {"tokens": tokens, "token_types": types, "merges": merges, "pre": _pre_name(self.tokenizer),
                "bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id, "chat_template": self.chat_template}


def _pre_name(tokenizer) -> str:
    """llama.cpp's name for this tokenizer's pre-tokenizer, as far as llmkit can tell."""
    text = json.dumps(json.loads(tokenizer.to_str()).get("pre_tokenizer"))
    if "Digits" in text or '"\\\\p{N}"' in text:
        return "smollm"
    if "p{N}{1,3}" in text:
        return "llama-bpe"
    return "gpt2"


def from_byte_pair(tokenizer) -> HFTokenizer:
    """llmkit's own byte-level BPE (`bpe`, `gpt2`: tiktoken tables) as an HF tokenizer with the
    same ids, for files other tools read (tokenizer.json, GGUF)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    from llmkit.data.bpe import byte_symbols, merges_of

    symbols = byte_symbols()
    spell = lambda token: "".join(symbols[b] for b in token)  # noqa: E731
    names = {i: name for name, i in tokenizer.specials.items()}
    vocab = {names[i] if t is None else spell(t): i for i, t in enumerate(tokenizer.tokens)}
    hf = Tokenizer(models.BPE(vocab, [(spell(a), spell(b)) for a, b in merges_of(tokenizer)]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in tokenizer.specials])
    eot = getattr(tokenizer, "eot_id", None)
    return HFTokenizer(hf, eot, eot, None, None, tokenizer.vocab_size)
