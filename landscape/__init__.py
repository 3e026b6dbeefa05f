"""Loss-landscape diagnostics: error barriers, sibling runs, perturbations, Hessians.

Imports ``imp`` only; attaches to the IMP driver through its hooks (DESIGN.md §2).
Importing the package registers every measurement (:mod:`landscape.registry`), and with
it the ``[landscape]`` config keys that measurements add.
"""

from landscape import registry  # noqa: F401  (registers the measurements' config keys)
