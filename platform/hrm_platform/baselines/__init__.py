"""Trained baselines beside the HRM, fitted on the same features, windows and labels (`base.fit_baseline`)."""
