"""Evaluation: perplexity, the BabyLM tasks through lm-eval, reading, statistics, reports and figures."""
