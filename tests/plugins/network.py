"""Shared pytest fixtures: network."""
