"""Everlook: self-hosted semantic search for images and sound.

This package is the program shell: settings, the CLI, and the wiring that builds the
parts (catalog, embedders, vector stores, pipeline) from settings and hands them in.
"""

__version__ = "0.1.0"
