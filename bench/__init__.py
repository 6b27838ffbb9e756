"""Timing of the training step (step.py, kernel_profile.py, report.py), the main job (run.py)
and the paper reproductions (paper/). Run from the repository root as modules, e.g.
``python -m bench.step --quick``."""
