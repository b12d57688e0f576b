"""Text matching shared by the catalog and its stdlib-only reader (catalog.lite)."""

from __future__ import annotations

import re


def phrase(text: str) -> str:
    """Lower-case words separated by single spaces, padded with a space at each end, so
    that `phrase(label) in phrase(text)` means the text names the label as a whole phrase."""
    return f" {' '.join(re.findall(r'[a-z0-9]+', text.lower()))} "
