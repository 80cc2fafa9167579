"""The staged pipeline over a run directory: prepare → warmup → extract → stratify → experts → evaluate."""
