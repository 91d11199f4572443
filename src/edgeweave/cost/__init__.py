"""Costs: how long each operator takes on each device and each tensor on each link.

A profile gives operator times on a reference device; a `Cluster` (devices with relative
speeds, memory and power models, and the links between them) turns those into times on the
devices and links of a real deployment.
"""
