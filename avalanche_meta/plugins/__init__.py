"""Avalanche plugins of avalanche-meta (append one export line per plugin)."""
