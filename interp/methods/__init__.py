"""Paper analyses, each composed from the primitives: ``ioi`` (Wang et al. 2022) and
``circuit_reuse`` (Merullo et al. 2024)."""
