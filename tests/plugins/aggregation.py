"""Shared pytest fixtures: aggregation."""
