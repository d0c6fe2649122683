"""Planner: the cost model, the search, and the `planner` command line."""
