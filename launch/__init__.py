"""Launchers that run main.py's jobs under other engines."""
