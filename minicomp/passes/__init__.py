"""Passes over the graph IR and the loop IR, one per module."""
