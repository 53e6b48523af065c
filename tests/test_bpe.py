"""Byte-level BPE: `gpt2` gives GPT-2's exact ids; a trained `bpe` gives HF tokenizers' exact ids
and round-trips any unicode; both survive the save/load of shards and checkpoints."""

from __future__ import annotations

import random

import numpy as np
import pytest

from llmkit.data.bpe import EOT, GPT2_PATTERN, gpt2_tokenizer, train_bpe
from llmkit.data.prepare import Span, read_chunks
from llmkit.data.tokenizer import identity, tokenizer_from_dict

VARIED = [
    "Hello, world! It's 2024; they'll've done it.",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\t\ttabs\n\n\nnewlines\r\nCRLF \n \n  \n",
    "numbers 1234567890 3.14159 -42 1e10 ０１２",
    "unicode: naïve café — “quotes” 日本語のテキスト 😀👍🏽 Ελληνικά русский",
    f"one document{EOT}another document{EOT}",
    f"{EOT}",
    "",
    " ",
    "\u00a0non-breaking\u00a0space \u3000ideographic space",
    "emoji zwj 👩‍👩‍👧 and combining e\u0301",
]


@pytest.fixture(scope="module")
def gpt2(mirror):
    return gpt2_tokenizer(mirror / "gpt2_tokenizer")


@pytest.fixture(scope="module")
def references(mirror):
    """Two independent GPT-2 encoders built from the same files: tiktoken's own loader and HF
    tokenizers' BPE model."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    files = mirror / "gpt2_tokenizer"
    ranks = data_gym_to_mergeable_bpe_ranks(str(files / "vocab.bpe"), str(files / "encoder.json"))
    tk = tiktoken.Encoding("gpt2-reference", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                           special_tokens={EOT: 50256}, explicit_n_vocab=50257)
    hf = Tokenizer(models.BPE.from_file(str(files / "encoder.json"), str(files / "vocab.bpe")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.add_special_tokens([AddedToken(EOT, special=True)])
    return {"tiktoken": lambda t: tk.encode(t, allowed_special="all"), "hf": lambda t: hf.encode(t).ids}


def test_gpt2_ids_equal_the_reference_encoders(gpt2, references, mirror):
    texts = VARIED + [(mirror / "tinyshakespeare/input.txt").read_text()[:200_000],
                      (mirror / "wikitext-2/test.txt").read_text()[:200_000]]
    for text in texts:
        ids = gpt2.encode(text).tolist()
        for name, reference in references.items():
            assert ids == reference(text), (name, text[:60])
        assert gpt2.decode(ids) == text
    assert gpt2.vocab_size == 50257 and gpt2.eot_id == 50256
    assert gpt2.encode("Hello world").tolist() == [15496, 995]  # GPT-2's well-known ids


@pytest.fixture(scope="module")
def wiki_bpe(mirror):
    text = (mirror / "wikitext-2/valid.txt").read_text()
    return train_bpe([text[: len(text) // 2], text[len(text) // 2 :]], 2000)


def test_trained_bpe_ids_equal_hf_tokenizers(wiki_bpe, mirror):
    """tiktoken runs llmkit's bpe; the ids must be what HF's trained tokenizer itself gives."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    text = (mirror / "wikitext-2/valid.txt").read_text()
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator([text[: len(text) // 2], text[len(text) // 2 :]], trainers.BpeTrainer(
        vocab_size=2000, special_tokens=[EOT], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    for sample in VARIED + [(mirror / "wikitext-2/test.txt").read_text()]:
        assert wiki_bpe.encode(sample).tolist() == hf.encode(sample).ids, sample[:60]
    assert wiki_bpe.vocab_size == 2000 and wiki_bpe.eot_id == 0


def test_bpe_round_trips_arbitrary_unicode(wiki_bpe):
    rng = random.Random(0)
    # Code points from every plane that can be encoded (no lone surrogates), mixed with spaces.
    alphabet = [chr(c) for c in [*range(0x20, 0x7F), *range(0xA0, 0x2FFF), *range(0xE000, 0xFFFD),
                                 *range(0x1F300, 0x1F6FF), 0x10FFFF]]
    for _ in range(50):
        text = "".join(rng.choice(alphabet + [" ", "\n", "  "]) for _ in range(rng.randrange(1, 400)))
        assert wiki_bpe.decode(wiki_bpe.encode(text)) == text


def test_document_separator_is_one_special_token(wiki_bpe, gpt2):
    for tokenizer in (wiki_bpe, gpt2):
        ids = tokenizer.encode(f"first{EOT}second").tolist()
        assert ids.count(tokenizer.eot_id) == 1
        assert tokenizer.decode(ids) == f"first{EOT}second"


def test_tokenizers_survive_their_saved_form(wiki_bpe, gpt2):
    for tokenizer in (wiki_bpe, gpt2):
        again = tokenizer_from_dict(tokenizer.to_dict())
        assert identity(again) == identity(tokenizer)
        assert again.encode(VARIED[4]).tolist() == tokenizer.encode(VARIED[4]).tolist()
    assert identity(wiki_bpe).startswith("bpe-") and identity(gpt2).startswith("gpt2-")


def test_chunked_encoding_equals_whole_text_encoding(gpt2, tmp_path, mirror):
    """`llmkit tokenize` cuts big texts into chunks; the cuts must not change a single id."""
    text = (mirror / "wikitext-2/test.txt").read_text()[:300_000] + "  \n\n tail   "
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode())
    chunks = [t for _, t in read_chunks(Span(path, 0, path.stat().st_size), chunk_bytes=4096)]
    assert len(chunks) > 50 and "".join(chunks) == text
    chunked = np.concatenate(gpt2.encode_batch(chunks))
    assert np.array_equal(chunked, gpt2.encode(text))


def test_text_without_spaces_is_cut_at_lines_and_encodes_as_a_whole(gpt2, tmp_path):
    """Japanese has no spaces to cut at: chunks end at newlines between two characters instead,
    and memory stays bounded (no block carried on and on)."""
    line = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。\n"
    text = line * 2000
    path = tmp_path / "ja.txt"
    path.write_bytes(text.encode())
    chunks = [t for _, t in read_chunks(Span(path, 0, path.stat().st_size), chunk_bytes=4096)]
    assert len(chunks) > 20 and max(len(c.encode()) for c in chunks) < 2 * 4096
    assert np.array_equal(np.concatenate(gpt2.encode_batch(chunks)), gpt2.encode(text))
