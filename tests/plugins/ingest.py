"""Shared pytest fixtures: ingest."""
