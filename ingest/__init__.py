"""Camera ingest: decode streams, sample, publish frames (see docs/architecture.md)."""
