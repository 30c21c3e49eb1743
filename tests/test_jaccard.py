"""Single-class statistics: candidates, Jaccard agreement, the null fence and the bias table."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
import scipy.stats

from augsense.errors import AugsenseError
from augsense.estimators.jaccard import (
    NullThreshold,
    confirmed_biases,
    jaccard_null_threshold,
    jaccard_per_image,
    mean_jaccard,
    top_k_sensitive_classes,
)


@pytest.mark.parametrize(
    ("n_classes", "k", "n_images", "paper"),
    [(1000, 5, 50_000, "0.0030"), (365, 5, 36_500, "0.00806")],
)
def test_null_threshold_reproduces_the_paper(n_classes: int, k: int, n_images: int, paper: str) -> None:
    exact = jaccard_null_threshold(n_classes, k, n_images)
    assert exact.method == "exact"
    digits = len(paper.split(".")[1])
    assert f"{exact.threshold:.{digits}f}" == paper
    simulated = jaccard_null_threshold(n_classes, k, n_images, method="simulate", n_sim=50_000, seed=1)
    assert simulated.threshold == pytest.approx(exact.threshold, rel=2e-3)
    assert exact.q1 < exact.mean < exact.q3 < exact.threshold


def _brute_force_quartiles(n_classes: int, k: int, n_images: int) -> tuple[Fraction, Fraction]:
    """Enumerate every multiset of per-image overlaps: exact law of the mean Jaccard."""
    pmf = scipy.stats.hypergeom(n_classes, k, k).pmf(np.arange(k + 1))
    law: dict[Fraction, float] = {}
    for overlaps in itertools.product(range(k + 1), repeat=n_images):
        mean = sum(Fraction(j, 2 * k - j) for j in overlaps) / n_images
        law[mean] = law.get(mean, 0.0) + float(np.prod(pmf[list(overlaps)]))
    support = sorted(law)
    cdf = np.cumsum([law[s] for s in support])
    return support[int(np.searchsorted(cdf, 0.25 - 1e-12))], support[int(np.searchsorted(cdf, 0.75 - 1e-12))]


@pytest.mark.parametrize(("n_classes", "k", "n_images"), [(10, 3, 5), (6, 2, 7), (20, 4, 4)])
def test_exact_null_matches_enumeration(n_classes: int, k: int, n_images: int) -> None:
    q1, q3 = _brute_force_quartiles(n_classes, k, n_images)
    null = jaccard_null_threshold(n_classes, k, n_images, method="exact")
    assert null.q1 == pytest.approx(float(q1), abs=1e-12)
    assert null.q3 == pytest.approx(float(q3), abs=1e-12)
    assert null.threshold == pytest.approx(float(q3 + Fraction(3, 2) * (q3 - q1)), abs=1e-12)


def test_windowed_fft_agrees_with_full_lattice() -> None:
    """N = 3000 uses the ±40 SD window; its quartiles must equal simulation within MC error."""
    exact = jaccard_null_threshold(100, 5, 3000, method="exact")
    simulated = jaccard_null_threshold(100, 5, 3000, method="simulate", n_sim=100_000, seed=3)
    assert exact.q1 == pytest.approx(simulated.q1, rel=2e-3)
    assert exact.q3 == pytest.approx(simulated.q3, rel=2e-3)


def test_fine_lattice_falls_back_to_simulation() -> None:
    null = jaccard_null_threshold(1000, 12, 50_000, n_sim=20_000)
    assert null.method.startswith("simulate")
    with pytest.raises(AugsenseError, match="method='simulate'"):
        jaccard_null_threshold(1000, 12, 50_000, method="exact")


def test_jaccard_per_image_and_mean() -> None:
    predictions = np.array([[1, 2, 3], [4, 5, 6], [3, 2, 1], [1, 9, 8]])
    per_image = jaccard_per_image([1, 2, 3], predictions)
    np.testing.assert_allclose(per_image, [1.0, 0.0, 1.0, 1 / 5])
    assert mean_jaccard([1, 2, 3], predictions) == pytest.approx(np.mean([1, 0, 1, 0.2]))
    per_row_candidates = np.array([[1, 2, 3], [4, 5, 7], [0, 7, 8], [1, 9, 7]])
    np.testing.assert_allclose(jaccard_per_image(per_row_candidates, predictions), [1.0, 0.5, 0.0, 0.5])
    np.testing.assert_allclose(jaccard_per_image([1], predictions), [1 / 3, 0.0, 1 / 3, 1 / 3])


def test_mean_jaccard_of_random_sets_matches_null_mean() -> None:
    rng = np.random.default_rng(0)
    n, classes, k = 20_000, 50, 5
    predictions = np.argsort(rng.uniform(size=(n, classes)), axis=1)[:, :k]
    candidates = np.argsort(rng.uniform(size=(n, classes)), axis=1)[:, :k]
    null = jaccard_null_threshold(classes, k, n)
    assert mean_jaccard(candidates, predictions) == pytest.approx(null.mean, abs=4 * (null.q3 - null.q1))


def test_top_k_sensitive_classes() -> None:
    index_map = np.array([[0.1, 0.9], [0.5, np.nan], [0.3, 0.2], [0.5, 0.0]])
    np.testing.assert_array_equal(top_k_sensitive_classes(index_map, k=2), [[1, 3], [0, 2]])
    assert top_k_sensitive_classes(index_map, k=4)[1, -1] == 1  # NaN ranks last


def test_confirmed_biases_table() -> None:
    null = jaccard_null_threshold(1000, 5, 50_000)
    names = [f"class{i}" for i in range(1000)]
    table = confirmed_biases(
        {"erasing": [782, 664, 851, 527, 508], "hue": [1, 2, 3, 4, 5]},
        {"erasing": 0.137, "hue": 0.0021},
        null,
        class_names=names,
    )
    assert table["factor"].tolist() == ["erasing", "hue"]
    assert table["confirmed"].tolist() == [True, False]
    assert table.loc[0, "class_names"][0] == "class782"
    assert table.loc[0, "ratio"] == pytest.approx(0.137 / null.threshold)
    only = confirmed_biases({"hue": [1, 2]}, {"hue": 0.001}, 0.003, only_confirmed=True)
    assert only.empty


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: jaccard_per_image([1, 1, 2], [[1, 2, 3]]), "repeats a class"),
        (lambda: jaccard_per_image([[1, 2]] * 2, [[1, 2]] * 3), "n_images = 3"),
        (lambda: jaccard_per_image([0.5, 1.0], [[1, 2]]), "integer class indices"),
        (lambda: jaccard_per_image([-1, 2], [[1, 2]]), "negative class"),
        (lambda: jaccard_per_image([], [[1, 2]]), "empty"),
        (lambda: jaccard_null_threshold(10, 11, 5), "exceeds n_classes"),
        (lambda: jaccard_null_threshold(10, 2, 0), "n_images must be"),
        (lambda: jaccard_null_threshold(10, 2, 5, method="bootstrap"), "method must be"),
        (lambda: top_k_sensitive_classes(np.ones((3, 2)), k=4), r"k must be an integer in \[1, 3\]"),
        (lambda: top_k_sensitive_classes(np.ones(3)), "shape \\(n_classes, n_factors\\)"),
        (lambda: confirmed_biases({"a": [1]}, {"b": 0.1}, 0.01), "same keys"),
        (lambda: confirmed_biases({"a": [1]}, {"a": 1.5}, 0.01), "not a Jaccard index"),
        (lambda: confirmed_biases({"a": [1]}, {"a": 0.5}, float("nan")), "positive finite"),
    ],
)
def test_bad_input(call, message: str) -> None:
    with pytest.raises(AugsenseError, match=message):
        call()


def test_null_threshold_is_a_plain_record() -> None:
    null = jaccard_null_threshold(1000, 5, 50_000)
    assert isinstance(null, NullThreshold)
    assert set(null.to_dict()) >= {"mean", "q1", "q3", "iqr", "threshold", "method"}
    assert null.iqr == pytest.approx(null.q3 - null.q1)
