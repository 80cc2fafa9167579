"""Ray Tune sweeps over a run's shared warm-up: search spaces (space.py), one trial (trial.py),
the experiment and its summary (sweep.py), and the console while it runs (progress.py)."""
