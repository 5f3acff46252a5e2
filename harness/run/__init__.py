"""Stage 2, run: the executor (worker pools, timeouts) and the runners, one per framework path."""
