"""Shared pytest fixtures: serve."""
