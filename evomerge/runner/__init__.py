"""Drivers that run a search: local (in-process) now; Ray workers and the SQL archive next."""
