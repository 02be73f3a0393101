"""Reads for waves: status, lists, rollout history and factory status."""
