"""HRM trading platform: train a Hierarchical Reasoning Model with Ray Train, serve it with Ray Serve."""

__version__ = "0.1.0"
