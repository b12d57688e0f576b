"""Scanning, media decoding and the indexing pipeline. May import catalog, search, enrich."""
