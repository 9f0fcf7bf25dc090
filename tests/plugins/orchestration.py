"""Shared pytest fixtures: orchestration."""
