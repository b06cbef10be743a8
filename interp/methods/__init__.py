"""Paper analyses, each composed from the primitives: ``ioi`` (Wang et al. 2022), ``circuit_reuse``
(Merullo et al. 2024), ``retrieval_heads`` (Wu et al. 2024), ``correct_letter`` (Lieberum et al. 2023)."""
