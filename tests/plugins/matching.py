"""Shared pytest fixtures: matching."""
