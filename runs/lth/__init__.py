"""The ``lth`` command: :mod:`runs.lth.cli` (the parser and the run commands),
:mod:`runs.lth.measure` (commands that measure), :mod:`runs.lth.analyse` (commands that
read results), :mod:`runs.lth.sweep` (sweeps) and :mod:`runs.lth.tables` (terminal
tables). The experiment files sit beside it in ``runs/``, the benchmarks in ``runs/bench``.
"""
