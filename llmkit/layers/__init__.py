"""The parts every model is built from: embeddings and positions, attention (with its KV cache),
the MLP, norms, the block, initialisation, LoRA adapters, and the loss (cross_entropy)."""
