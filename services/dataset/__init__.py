"""The dataset service: balanced, leak-free, versioned training sets (see docs/datasets.md)."""
