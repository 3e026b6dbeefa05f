"""Loss-landscape diagnostics: error barriers, sibling runs, perturbations, Hessians.

Imports ``imp`` only; attaches to the IMP driver through its hooks (DESIGN.md §2).
"""
