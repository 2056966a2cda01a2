"""Torch-side work behind the nodes; only workers import it."""
