"""Shared pytest fixtures: simulate."""
