"""Persistence: typed models, the SQLite engine pair and the repository functions."""
