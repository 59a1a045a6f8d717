"""Tracking, FAISS index and search (see docs/architecture.md)."""
