"""edgeweave: one network's inference across several devices on slow links."""

__version__ = "0.1.0"
