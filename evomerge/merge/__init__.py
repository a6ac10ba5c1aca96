"""Merge math, safe model IO and materialization of recipes."""
