"""Benchmarks that print comparison tables."""
