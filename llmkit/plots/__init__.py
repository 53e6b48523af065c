"""PNG pictures: what every figure shares (figures), runs (curves: loss, learning rate), and
what models compute (attention and masks, positions, embeddings)."""
