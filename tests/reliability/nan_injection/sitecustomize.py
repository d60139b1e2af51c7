"""Fault injection for Ray Train workers (tests only): a NaN weight at the start of one epoch.

Python imports `sitecustomize` at start-up from the first folder on sys.path that has one. The reliability
test starts its Ray Train workers with this folder on PYTHONPATH and HRM_TEST_NAN_AT_EPOCH set; every other
process (the test itself, Serve, other tests' workers) never sees either, so nothing changes for them.
The loop keeps running real code: the model's forward turns the poisoned weight into a NaN loss.
"""

import os

_NAN_AT_EPOCH = os.environ.get("HRM_TEST_NAN_AT_EPOCH")


def _install(nan_at_epoch: int) -> None:
    import math

    import torch

    from hrm_platform.training import fit

    real_train_epoch = fit.train_epoch

    def train_epoch_with_nan(run, *args, **kwargs):
        if run.epoch + 1 == nan_at_epoch:  # run.epoch counts completed epochs
            with torch.no_grad():
                next(run.model.parameters()).view(-1)[0] = math.nan
        return real_train_epoch(run, *args, **kwargs)

    fit.train_epoch = train_epoch_with_nan  # the epoch loop both training paths run


if _NAN_AT_EPOCH:
    _install(int(_NAN_AT_EPOCH))
