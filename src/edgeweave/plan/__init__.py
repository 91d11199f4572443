"""Planners: pure functions from (profile, cluster, objective) to a `Plan`."""
