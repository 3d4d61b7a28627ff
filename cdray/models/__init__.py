"""Llama models: shapes, building and loading, checkpoints, and the training loop."""
