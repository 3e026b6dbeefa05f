"""Fixtures for the ``runs`` tests."""

import pytest

from tests.runs.slurm_cluster import LocalSlurm, SlurmUnavailable, ensure_installed


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real single-node Slurm for the whole session (see tests/runs/slurm_cluster.py),
    installed with apt-get if missing; a test using it is skipped, with the reason, when
    none can run."""
    reason = ensure_installed()
    if reason:
        pytest.skip(f"no local Slurm: {reason}")
    cluster = LocalSlurm()
    try:
        cluster.__enter__()
    except SlurmUnavailable as error:  # __enter__ has already stopped whatever it started
        pytest.skip(f"no local Slurm: {error.reason}")
    try:
        yield cluster
    finally:
        cluster.stop()
