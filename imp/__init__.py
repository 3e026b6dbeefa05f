"""The engine of the lottery-ticket toolkit, on a foundation of plain modules.

Foundation, :mod:`imp.base` (no training code; the analysis layer reads results through
it): ``config`` (typed run configs and run ids), ``duration`` (lengths with units),
``errors`` (one-line user errors), ``seeds`` (one seed per source of randomness),
``runtime`` (device and threads), ``names`` (every stored name), ``store`` (atomic
HDF5 files, provenance, the run lock), ``record`` (a trained network as stored) and
``results`` (reading a run's rows and measurements).

Engine, built on it: ``datasets`` and ``data`` (data sets as device tensors),
``models`` (the model zoo), ``pruning`` (masks), ``train`` (the loop), ``level`` (one
masked training), ``batched`` (replicates under ``vmap``), ``scores``, ``pergrad``,
``subsets`` and ``diet`` (the data diet), and ``trunk`` (the IMP driver, with hooks
that the measurements of ``landscape`` attach to); ``legacy`` converts results stored
by earlier versions.

``imp`` never imports ``landscape``, ``analysis`` or ``runs`` (see DESIGN.md §2);
``tests/test_layering.py`` checks these rules.
"""

__version__ = "0.1.0"
