"""Test support: real media servers and media files that the tests start and stop."""
