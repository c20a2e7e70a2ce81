"""Probes: subscribers to the engine hook points that turn them into records (see the probes issue)."""
