"""The application layer: experiment files, benchmarks and the ``lth`` command."""
