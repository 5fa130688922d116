"""Money: prices per model and the cost of a call (pure functions), usage reports and budgets."""
