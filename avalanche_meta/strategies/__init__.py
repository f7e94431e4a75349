"""Avalanche strategies of avalanche-meta (append one export line per strategy)."""
