"""The engine of the lottery-ticket toolkit: configs, run identity, the HDF5 store, data,
models, training (and, with later work, pruning, rewinding and example scores).

``imp`` never imports ``landscape``, ``analysis`` or ``runs`` (see DESIGN.md §2).
"""

__version__ = "0.1.0"
