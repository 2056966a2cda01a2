"""Node classes by family (schemas and thin run methods; no torch at import) and their registry."""
