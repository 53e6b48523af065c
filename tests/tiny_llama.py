"""A tiny random Llama saved as transformers saves one (config.json, safetensors, tokenizer.json
with a ChatML template): a stand-in for SmolLM2 in tests that must not need the 98 MB file."""

from __future__ import annotations

import json

import torch
import transformers

TEXT = "The city of Paris , in 1889 , built a tower . 12345 ; Ünïcode and 日本語 too .\n\n  spaces"
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer(directory, vocab_size=300):
    """A byte-level BPE with chat specials, trained here, saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TEXT * 20, "hello world, how are you? " * 50], trainer)
    tok.save(str(directory / "tokenizer.json"))
    settings = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": TEMPLATE,
                "tokenizer_class": "PreTrainedTokenizerFast"}
    (directory / "tokenizer_config.json").write_text(json.dumps(settings))
    return tok.get_vocab_size()


def tiny_llama(directory, tie: bool = True, shards: bool = False, **overrides):
    torch.manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = tiny_tokenizer(directory)
    sizes = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3, "max_position_embeddings": 128,
             **overrides}
    config = transformers.LlamaConfig(vocab_size=vocab, num_attention_heads=4, num_key_value_heads=2,
                                      rms_norm_eps=1e-5, rope_theta=50000.0,
                                      tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, **sizes)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms start at 1: randomise them too, so a misplaced one shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(directory, max_shard_size="100KB" if shards else "5GB")
    return model
