"""The real corpus: text sources, document splits, the BPE tokenizer, token streams and corpus telemetry."""
