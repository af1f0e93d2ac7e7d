"""Crafted inputs for the differ tests: pairs (pairs.yaml) and generated traffic (traffic.py)."""
