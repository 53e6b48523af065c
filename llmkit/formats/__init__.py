"""Models from elsewhere and out again: Hugging Face directories (hf), GGUF files (gguf), the
name tables both go through (tables), and `llmkit export` (export)."""
