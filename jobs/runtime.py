"""How every job (train, export, evaluate) runs the hrm_platform of the checkout it was submitted from.

    from jobs.runtime import connect_job_cluster, use_this_checkout

    use_this_checkout()                    # first thing in main(), before anything imports hrm_platform
    connect_job_cluster(log_to_driver=False)

`ray job submit --working-dir .` runs a job from a temporary copy of this repository on the cluster. The
package is imported from that copy's `platform/`, never from whatever hrm_platform a node has installed (an
older release, or none):
- in the job's driver: `platform/` goes first on sys.path;
- in the driver's child processes (export times a fresh replica in one): first on PYTHONPATH;
- in every Ray worker the job starts (Train controller and workers, walk-forward folds):
  `runtime_env={"py_modules": [platform/hrm_platform]}`, which Ray uploads once and merges with the job's
  working_dir. Run without `ray job submit` (no RAY_ADDRESS), a job starts no cluster here; the library
  starts an embedded loopback one where it needs Ray, as the `hrm` commands do.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1] / "platform"  # a source root, not a package
PACKAGE_DIR = SOURCE_ROOT / "hrm_platform"


def use_this_checkout() -> None:
    """Import hrm_platform from this checkout, in this process and in the processes it starts."""
    imported = sys.modules.get("hrm_platform")
    if imported is not None and Path(imported.__file__).resolve().parent != PACKAGE_DIR:  # the first import stays
        raise RuntimeError(f"hrm_platform came from {Path(imported.__file__).parent}, not {PACKAGE_DIR}")
    sys.path.insert(0, str(SOURCE_ROOT))
    inherited = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(SOURCE_ROOT), inherited] if inherited else [str(SOURCE_ROOT)])


def job_runtime_env() -> dict[str, list[str]]:
    """The runtime_env that ships this checkout's package to the job's Ray workers."""
    return {"py_modules": [str(PACKAGE_DIR)]}


def connect_job_cluster(log_to_driver: bool) -> bool:
    """Inside `ray job submit` (RAY_ADDRESS set): connect to the job's cluster with `job_runtime_env()`.
    Returns whether it connected. `log_to_driver`: also forward the workers' own logs (the jobs' --verbose)."""
    if "RAY_ADDRESS" not in os.environ:
        return False
    import ray

    ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=job_runtime_env(), log_to_driver=log_to_driver)
    return True


def job_storage_path(storage_path: str) -> str:
    """Absolute paths and URIs as given; a relative path under ~/ray_results (the job's cwd is temporary)."""
    if "://" in storage_path or Path(storage_path).expanduser().is_absolute():
        return storage_path
    return str(Path.home() / "ray_results" / storage_path)
