"""Datasets, losses, metrics and training loops (installed as ``fiacli.training``)."""
