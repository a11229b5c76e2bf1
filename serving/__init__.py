"""Serving exported models: loading any export (runtime.py) and the HTTP inference service."""
