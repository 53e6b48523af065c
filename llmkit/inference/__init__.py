"""Inference: choosing tokens (sampling), decoding with the KV cache (decoding), beam search
(beam), ids to text with stop strings (stream), and the one engine over them (generation)."""
