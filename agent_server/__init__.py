"""agent_server: a self-hosted backend for Claude agents."""

__version__ = "0.1.0"
