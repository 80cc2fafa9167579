"""Where the trixmed checkout is: the folder whose slurm/ holds the templates and job.sh.

launch/ submits the same jobs as `sbatch slurm/*.sbatch`, so it needs those files. From a source
checkout or an editable install they sit beside the package; a wheel installed elsewhere has only
the Python package, and then the checkout is the current directory (jobs are submitted from its
root, docs/cluster.md) or `$TRIXMED_CHECKOUT`.
"""

from __future__ import annotations

import os
from pathlib import Path


def checkout() -> Path:
    """The first of $TRIXMED_CHECKOUT, the folder above this package and the current directory
    that has slurm/job.sh; a RuntimeError in one line when none has."""
    candidates = [Path(p) for p in (os.environ.get("TRIXMED_CHECKOUT"),) if p]
    candidates += [Path(__file__).resolve().parents[1], Path.cwd()]
    for root in candidates:
        if (root / "slurm" / "job.sh").is_file():
            return root.resolve()
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise RuntimeError(f"no trixmed checkout (a folder with slurm/job.sh) in {looked}: "
                       "run from the checkout's root or set TRIXMED_CHECKOUT")


def slurm_dir() -> Path:
    return checkout() / "slurm"
