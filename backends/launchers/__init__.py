"""Launchers: start engines (local processes, Docker containers) from a backend's config entry."""
