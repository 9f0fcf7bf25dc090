"""Shared pytest fixtures: infra."""
