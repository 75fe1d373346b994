"""FIANet and its parts (installed as ``fiacli.models``)."""
