"""Synthetic person-search world: a deterministic renderer of scenes and identities."""
