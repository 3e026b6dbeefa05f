"""The foundation the engine and the measurements build on: typed configs and run ids
(``config``), lengths with units (``duration``), one-line user errors (``errors``), seeds
(``seeds``), device and threads (``runtime``), every stored name (``names``), atomic HDF5
files and the run lock (``store``), the record of a trained network (``record``) and the
reader of a run's results (``results``).

Nothing here imports the engine (data, models, training, pruning); the analysis layer
reads results through these modules alone. ``tests/test_layering.py`` checks it.
"""
