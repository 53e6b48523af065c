"""The data stage: named datasets and their download (sources), tokenizers (tokenizer, bpe),
streaming tokenization into shards (prepare, shards), and the batches training draws (batches)."""
