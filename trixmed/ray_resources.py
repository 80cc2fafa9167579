"""Bounded waits for Ray resources, for every layer that starts Ray actors (training workers,
the extract pool, the K-means workers): a shape the cluster cannot place fails in one line naming
the config key and what is missing, instead of waiting until the job's time limit (Ray never
gives up on a pending request)."""

from __future__ import annotations

import os

from trixmed.errors import TrixmedError

# seconds any wait for Ray resources may take before it fails in one line: a shape that cannot be
# placed would otherwise wait until the job's time limit (Ray never gives up on a pending request)
RESOURCE_TIMEOUT_ENV = "TRIXMED_RAY_RESOURCE_TIMEOUT"
DEFAULT_RESOURCE_TIMEOUT_S = 120.0


def resource_timeout() -> float:
    return float(os.environ.get(RESOURCE_TIMEOUT_ENV) or DEFAULT_RESOURCE_TIMEOUT_S)


def wait_for_resources(bundles: list[dict[str, float]], key: str, timeout: float | None = None) -> None:
    """Block until the Ray cluster can hold `bundles` at once, each on one node (a placement group,
    released again at once), or raise a one-line TrixmedError naming `key` and what is missing."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    timeout = resource_timeout() if timeout is None else timeout
    group = placement_group([{k: v for k, v in b.items() if v} for b in bundles], strategy="PACK")
    try:
        ray.get(group.ready(), timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise TrixmedError(key, shortage(bundles, timeout)) from None
    finally:
        remove_placement_group(group)


def shortage(bundles: list[dict[str, float]], timeout: float) -> str:
    """`Ray could not place N × (a GPU + b CPU) …` and what the cluster has: in all, free now, and
    on its largest node (a bundle cannot span nodes)."""
    import ray

    bundle = {k: v for k, v in bundles[0].items() if v}
    asked = " + ".join(f"{v:g} {k}" for k, v in bundle.items())
    total, free = ray.cluster_resources(), ray.available_resources()
    largest = {k: max((n["Resources"].get(k, 0) for n in ray.nodes() if n["Alive"]), default=0) for k in bundle}
    have = ", ".join(f"{total.get(k, 0):g} {k} ({free.get(k, 0):g} free, at most {largest[k]:g} on one node)" for k in bundle)
    return f"Ray could not place {len(bundles)} × ({asked}) within {timeout:g} s ({RESOURCE_TIMEOUT_ENV}): the cluster has {have}"
