"""The embedded single-machine Ray cluster that `hrm train`, `hrm serve`, `hrm demo` and the tests start.

Ray picks the machine's LAN address for its node by default, so the GCS, the raylet and every worker's gRPC
port listen on all interfaces. Its loopback mode (meant for laptops) keeps every listener on 127.0.0.1,
which is what a one-machine cluster needs.
"""

from __future__ import annotations

import os

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def init_local_ray(num_cpus: int | None = None, log_to_driver: bool = True) -> None:
    """Start a new local cluster bound to loopback; never attach to another cluster on this machine.

    `log_to_driver` (the commands' --verbose) forwards the workers' logs and keeps Ray's INFO lines in this
    process; off, only Ray's errors show here, and our own lines (progress, stages) are the output.
    """
    import logging

    import ray

    from hrm_platform.ray_compat import set_loopback_cluster_mode

    # The environment for the processes the cluster starts; this process's value (read at import) below.
    os.environ.update(LOOPBACK_ENV)
    set_loopback_cluster_mode()
    ray.init(
        address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver,
        logging_level=logging.INFO if log_to_driver else logging.ERROR,
    )


def quiet_ray_data() -> None:
    """Ray Data's INFO lines (execution plans, progress tables) and progress bars off in this process, for a
    command whose own lines are the output (`data.loader: ray_data` without --verbose)."""
    import logging

    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False
