"""A Patroni cluster for one integration module: Consul and the members under a supervisord of their own."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devstack import supervise
from devstack.patroni import Cluster, local_cluster, start_data_tier
from devstack.stack import Ports


@dataclass
class DataTier:
    """A running cluster: its members, its DSN, its Consul's ports, the members' homes and the supervisord's folder."""

    cluster: Cluster
    dsn: str
    ports: Ports
    home: Path
    run_dir: Path


@contextmanager
def running_cluster(run_dir: Path, members: int, prefix: str) -> Iterator[DataTier]:
    """Starts Consul and `members` members on ports picked free (devstack.patroni.start_data_tier), their output in
    `run_dir/data-tier.log`; stops them and removes their data after. The members' homes are outside pytest's
    temporary root: the user Postgres runs as must pass through the folders above them."""
    ports = Ports.free()
    home = Path(tempfile.mkdtemp(prefix=f"shop-test-{prefix}-"))
    cluster = local_cluster(home, members, ports.consul_addr)
    with (run_dir / "data-tier.log").open("ab") as log:
        dsn, proc = start_data_tier(cluster, ports, run_dir, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield DataTier(cluster, dsn, ports, home, run_dir)
        finally:
            supervise.stop(proc)
            shutil.rmtree(home, ignore_errors=True)
