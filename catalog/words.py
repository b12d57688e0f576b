"""Text matching shared by the catalog and its stdlib-only reader (catalog.lite)."""

from __future__ import annotations

import re


def phrase(text: str) -> str:
    """Lower-case words separated by single spaces, padded with a space at each end, so
    that `phrase(label) in phrase(text)` means the text names the label as a whole phrase."""
    return f" {' '.join(re.findall(r'[a-z0-9]+', text.lower()))} "


# The distinct labels of a kind, one index seek each over ix_labels_kind_label (a "loose
# index scan", on SQLite and PostgreSQL alike): SELECT DISTINCT reads every row of the
# kind instead (3M label rows, 600k items with ImageNet's top 5: 0.4 s per query, 2 s
# without the index), and a text query asks this every time.
VOCABULARY = """
WITH RECURSIVE vocab(label) AS (
    SELECT min(label) FROM labels WHERE kind = :kind
    UNION ALL
    SELECT (SELECT min(label) FROM labels WHERE kind = :kind AND label > vocab.label)
    FROM vocab WHERE vocab.label IS NOT NULL
)
SELECT label FROM vocab WHERE label IS NOT NULL
"""
