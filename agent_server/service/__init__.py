"""The use cases the routes call: replies (start, continue, follow, cancel), conversations (audit, list, title,
delete, export), usage and budgets. Knows nothing of HTTP."""
