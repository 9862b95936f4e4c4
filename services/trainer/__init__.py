"""The trainer service: training jobs as subprocesses, persisted, watched, cancelled and resumed (mtserve.v1.Trainer)."""
