"""SSR's image-prototype bank: spherical K-means with class-mean initialisation, FIFO memory
(spec ssr.md §2.5)."""

import numpy as np
import pytest

from wsss_keras.ops.prototypes import PrototypeBank, spherical_kmeans


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def separated(rng, classes=4, per_class=30, dim=8, spread=0.1):
    directions = unit(rng.normal(size=(classes, dim)))
    features = np.concatenate([directions[k] * rng.uniform(0.5, 3.0, (per_class, 1)) + spread * rng.normal(size=(per_class, dim)) for k in range(classes)])
    labels = np.repeat(np.arange(classes), per_class)
    return features, labels, directions


def test_kmeans_recovers_class_aligned_centroids():
    rng = np.random.default_rng(0)
    features, labels, directions = separated(rng)
    # Shuffle, and mislabel a few samples: the class-mean start still lands cluster k on class k.
    order = rng.permutation(len(labels))
    features, labels = features[order], labels[order].copy()
    labels[:5] = (labels[:5] + 1) % 4
    centroids = spherical_kmeans(features, labels, 4)
    assert centroids.shape == (4, 8) and centroids.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)
    similarity = centroids @ directions.T
    assert (np.argmax(similarity, axis=1) == np.arange(4)).all()
    assert similarity.diagonal().min() > 0.95
    # Lloyd steps fix the mislabelled samples' pull: closer to the true direction than the
    # labelled-mean start.
    start = spherical_kmeans(features, labels, 4, iterations=0)
    assert (similarity.diagonal() >= (start @ directions.T).diagonal() - 1e-6).all()
    # The start is the normalised mean of the normalised class samples.
    np.testing.assert_allclose(start[2], unit(unit(features[labels == 2]).mean(axis=0)), rtol=1e-5)


def test_empty_class_uses_previous_or_a_deterministic_fallback():
    rng = np.random.default_rng(1)
    features, labels, directions = separated(rng, classes=3)
    previous = unit(rng.normal(size=(4, 8)))
    previous[3] = unit(-directions.sum(axis=0))  # far from every sample: keeps no member
    with_previous = spherical_kmeans(features, labels, 4, previous=previous)
    np.testing.assert_allclose(with_previous[3], previous[3], rtol=1e-5)
    fallback = spherical_kmeans(features, labels, 4, iterations=0)
    assert np.isfinite(fallback).all()
    np.testing.assert_allclose(np.linalg.norm(fallback, axis=1), 1.0, rtol=1e-5)
    global_mean = unit(unit(features).mean(axis=0))
    assert fallback[3] @ global_mean > 0.99
    np.testing.assert_array_equal(fallback, spherical_kmeans(features, labels, 4, iterations=0))
    with pytest.raises(ValueError):
        spherical_kmeans(features, labels, 2)  # labels beyond the class count
    with pytest.raises(ValueError):
        spherical_kmeans(np.zeros((0, 8)), np.zeros(0, int), 4)


def test_bank_fifo_cap_and_state_round_trip(tmp_path):
    bank = PrototypeBank(num_classes=3, per_class=4)
    assert len(bank) == 0
    for step in range(3):
        features = np.zeros((2, 3, 5), np.float32)
        features[:, :, 0] = 1.0
        features[0, :, 1] = step  # tags each step's first image
        features[1, :, 2] = step
        labels = np.array([[1, 1, 0], [1, 0, 0]])
        bank.add(features, labels)
    # Class 0: 6 samples seen, the 4 newest kept (oldest first); class 1: 3; class 2: none.
    assert len(bank) == 7 and bank.counts().tolist() == [4, 3, 0]
    held, held_labels = bank.samples()
    class0 = held[held_labels == 0]
    tags = [(round(float(row[1] / row[0])), round(float(row[2] / row[0]))) for row in class0]
    assert tags == [(1, 0), (0, 1), (2, 0), (0, 2)]
    np.testing.assert_allclose(np.linalg.norm(held, axis=1), 1.0, rtol=1e-6)

    previous = np.zeros((3, 5))
    previous[:, 0] = -1.0  # opposite to every sample: class 2 (no samples) keeps it
    prototypes = bank.refresh(previous=previous)
    assert prototypes.shape == (3, 5)
    np.testing.assert_allclose(prototypes[2], previous[2], atol=1e-6)
    assert prototypes[0] @ np.array([1.0, 0, 0, 0, 0]) > 0.5

    path = tmp_path / "bank.npz"
    np.savez(path, **bank.state())
    with np.load(path) as stored:
        restored = PrototypeBank.from_state(dict(stored))
    assert restored.per_class == 4 and restored.counts().tolist() == [4, 3, 0]
    np.testing.assert_array_equal(restored.samples()[0], held)
    np.testing.assert_array_equal(restored.prototypes, prototypes)
    # The restored bank keeps FIFO order: one more class-0 sample drops the oldest.
    restored.add(np.ones((1, 3, 5), np.float32), np.array([[1, 0, 0]]))
    assert restored.counts().tolist() == [4, 3, 0]
    np.testing.assert_array_equal(restored.samples()[0][:3], class0[1:])


def test_bank_errors_and_empty_refresh():
    bank = PrototypeBank(num_classes=2, per_class=3)
    with pytest.raises(ValueError):
        bank.refresh()
    np.testing.assert_allclose(bank.refresh(previous=np.eye(2, 4) * 2), np.eye(2, 4))
    with pytest.raises(ValueError):
        bank.add(np.ones((1, 3, 4), np.float32), np.ones((1, 3)))
    bank.add(np.ones((1, 2, 4), np.float32), np.ones((1, 2)))
    with pytest.raises(ValueError):
        bank.add(np.ones((1, 2, 5), np.float32), np.ones((1, 2)))
    with pytest.raises(ValueError):
        PrototypeBank.from_state({"features": np.zeros((0, 4))})


def test_uncapped_bank_keeps_every_sample_and_add_samples_matches_add(tmp_path):
    """SSR's "epoch" bank keeps the whole pass (per_class=None); the "recent" bank is filled
    row by row from the model's memory (add_samples)."""
    rng = np.random.default_rng(3)
    whole = PrototypeBank(num_classes=2, per_class=None)
    features = rng.normal(size=(300, 2, 4)).astype(np.float32)
    labels = np.ones((300, 2))
    labels[::3, 1] = 0
    whole.add(features, labels)
    assert whole.counts().tolist() == [300, 200]  # nothing dropped
    held, held_labels = whole.samples()
    np.testing.assert_allclose(held[held_labels == 1], unit(features[labels[:, 1] > 0, 1]), rtol=1e-5)
    path = tmp_path / "bank.npz"
    np.savez(path, **whole.state())
    with np.load(path) as stored:
        restored = PrototypeBank.from_state(dict(stored))
    assert restored.per_class is None and restored.counts().tolist() == [300, 200]

    rows = PrototypeBank(num_classes=2, per_class=150)
    rows.add_samples(held, held_labels)
    assert rows.counts().tolist() == [150, 150]  # the cap keeps the newest rows
    np.testing.assert_allclose(rows.samples()[0][rows.samples()[1] == 0], held[held_labels == 0][-150:], rtol=1e-6)
    with pytest.raises(ValueError, match="class ids"):
        rows.add_samples(held[:2], np.array([0, 2]))
    with pytest.raises(ValueError):
        PrototypeBank(num_classes=2, per_class=0)
