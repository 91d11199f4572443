"""Capture a model into an operator graph that can be inspected, costed, split and executed."""

from edgeweave.graph.capture import capture
from edgeweave.graph.execute import GraphRunner
from edgeweave.graph.opgraph import OpGraph, OpNode

__all__ = ["OpGraph", "OpNode", "GraphRunner", "capture"]
