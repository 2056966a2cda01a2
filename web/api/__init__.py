"""API blueprints, one per resource; each is registered under `/` and `/api`."""
