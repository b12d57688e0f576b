"""Embedders, vector stores and the query engine. May import ``catalog`` only."""
