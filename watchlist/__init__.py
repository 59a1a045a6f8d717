"""Watchlist and alerts (see docs/architecture.md)."""
