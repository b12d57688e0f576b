"""Enrichment stages (object detection, panoptic tags, style scores, style transfer).

Arrives with later issues; may import ``catalog`` and ``search`` (embedders).
"""
