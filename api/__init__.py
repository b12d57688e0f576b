"""The FastAPI service and web UI. Arrives with a later issue; may import catalog,
search and enrich."""
