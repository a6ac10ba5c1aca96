"""Fitness evaluation: task specs, engines (transformers, vLLM) and in-place candidate weights."""
