"""Models from elsewhere and out again: Hugging Face directories in and out (hf_gpt2), and
`llmkit export` (export)."""
