"""The web page's static files (served by http/web.py)."""
