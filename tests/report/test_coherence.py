"""Cluster coherence metrics on hand-made clusters whose answers are known."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from trixmed.report.coherence import (
    cluster_similarity,
    jaccard_matrix,
    routing_sharpness,
    sample_indices,
    silhouette,
)

# cluster 0: A, B identical, E a subset of them; cluster 1: C, D overlap; every set shares code 9
A, B, E = {"1", "2", "9"}, {"1", "2", "9"}, {"1", "9"}
C, D = {"3", "4", "9"}, {"3", "4", "5", "9"}


def test_jaccard_matrix_known_values():
    m = jaccard_matrix([A, C, D, set(), set()])
    assert m[0, 0] == 1 and m[1, 2] == pytest.approx(3 / 4) and m[0, 1] == pytest.approx(1 / 5)
    assert m[0, 2] == pytest.approx(1 / 6)
    # empty sets: 0 with anything, themselves included (SafeDrug's empty-union rule)
    assert (m[3] == 0).all() and m[3, 4] == 0
    assert np.allclose(m, m.T)


def test_within_and_between_on_hand_made_clusters():
    sets = [A, B, E, C, D]
    labels = [0, 0, 0, 1, 1]
    out = cluster_similarity(sets, labels, 2)
    within0 = (1 + 2 / 3 + 2 / 3) / 3          # A-B, A-E, B-E
    within1 = 3 / 4                            # C-D
    between = np.mean([1 / 5, 1 / 6, 1 / 5, 1 / 6, 1 / 4, 1 / 5])   # {A,B,E} × {C,D}
    assert out["matrix"][0, 0] == pytest.approx(within0)
    assert out["matrix"][1, 1] == pytest.approx(within1)
    assert out["matrix"][0, 1] == pytest.approx(between) == pytest.approx(out["matrix"][1, 0])
    assert out["within"] == pytest.approx((within0 + within1) / 2)
    assert out["between"] == pytest.approx(between)
    assert out["ratio"] == pytest.approx((within0 + within1) / 2 / between)
    # pair-weighted: 3 pairs in cluster 0, 1 in cluster 1, 6 between
    assert out["n_within_pairs"] == 4 and out["n_between_pairs"] == 6
    assert out["within_pairs"] == pytest.approx((3 * within0 + within1) / 4)
    assert out["between_pairs"] == pytest.approx(between)


def test_cluster_similarity_matches_a_brute_force_loop():
    rng = np.random.default_rng(3)
    sets = [set(rng.choice(12, size=int(rng.integers(0, 5)), replace=False).astype(str)) for _ in range(40)]
    labels = rng.integers(0, 4, size=40)
    out = cluster_similarity(sets, labels, 4)
    sums, counts = np.zeros((4, 4)), np.zeros((4, 4))
    for i, j in itertools.permutations(range(40), 2):
        union = sets[i] | sets[j]
        sums[labels[i], labels[j]] += len(sets[i] & sets[j]) / len(union) if union else 0.0
        counts[labels[i], labels[j]] += 1
    assert np.allclose(out["matrix"], sums / counts)


def test_singleton_and_empty_clusters_have_no_within_value():
    out = cluster_similarity([A, B, C], [0, 0, 1], 3)   # cluster 1: one member; cluster 2: none
    assert np.isnan(out["matrix"][1, 1]) and np.isnan(out["matrix"][2, 2]) and np.isnan(out["matrix"][0, 2])
    assert out["within"] == pytest.approx(1.0)          # only cluster 0 has a pair
    assert out["between"] == pytest.approx(1 / 5)       # A-C and B-C
    with pytest.raises(ValueError, match="labels"):
        cluster_similarity([A, B], [0], 1)


def test_identical_clusters_give_ratio_one_and_no_between_gives_nan():
    assert cluster_similarity([A, A, A, A], [0, 0, 1, 1], 2)["ratio"] == pytest.approx(1.0)
    assert np.isnan(cluster_similarity([{"1"}, {"1"}, {"2"}, {"2"}], [0, 0, 1, 1], 2)["ratio"])


def test_silhouette_known_cases():
    blobs = np.array([[0, 0], [0, 0.1], [10, 10], [10, 10.1]])
    assert silhouette(blobs, [0, 0, 1, 1]) == pytest.approx(1 - 0.1 / np.hypot(10, 10), abs=0.01)
    assert silhouette(blobs, [0, 1, 0, 1]) < 0
    assert np.isnan(silhouette(blobs, [0, 0, 0, 0]))       # one cluster: undefined
    big = np.random.default_rng(0).normal(size=(500, 3))
    labels = (big[:, 0] > 0).astype(int)
    sampled = silhouette(big, labels, sample_size=200, seed=1)
    assert sampled == silhouette(big, labels, sample_size=200, seed=1)   # seeded
    assert sampled == pytest.approx(silhouette(big, labels), abs=0.05)


def test_routing_sharpness_is_the_top_n_mass():
    g = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]])
    assert routing_sharpness(g, 1) == pytest.approx([0.5, 0.8, 1 / 3])
    assert routing_sharpness(g, 2) == pytest.approx([0.8, 0.9, 2 / 3])
    assert routing_sharpness(g, 3) == pytest.approx([1, 1, 1])
    with pytest.raises(ValueError):
        routing_sharpness(g, 4)


def test_sample_indices_seeded_sorted_and_complete_when_small():
    assert sample_indices(5, 10, 0).tolist() == [0, 1, 2, 3, 4]
    a = sample_indices(1000, 50, 7)
    assert len(set(a.tolist())) == 50 and (np.diff(a) > 0).all() and a.max() < 1000
    assert (a == sample_indices(1000, 50, 7)).all() and not (a == sample_indices(1000, 50, 8)).all()
