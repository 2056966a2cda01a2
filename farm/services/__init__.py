"""Use cases shared by the web and the workers (submit, queue, history, execution, workers)."""
