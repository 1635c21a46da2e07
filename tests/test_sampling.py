"""Specification of DAFormer-style rare-class sampling (cicld.data.sampling)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from cicld.data.sampling import RareClassSampler, class_weights, load_class_stats
from cicld.errors import DataError


def _write(tmp_path, entries):
    path = tmp_path / "sample_class_stats.json"
    path.write_text(json.dumps(entries))
    return path


# road everywhere (common), car in two frames, bicycle (rare) in one frame.
STATS = [
    {"file": "labels/00001_labelTrainIds.png", "0": 90000, "13": 5000},
    {"file": "labels/00002_labelTrainIds.png", "0": 80000, "13": 4000, "18": 3500},
    {"file": "labels/00003_labelTrainIds.png", "0": 95000},
]


def test_probabilities_follow_daformer_softmax_of_one_minus_frequency(tmp_path):
    sampler = RareClassSampler(_write(tmp_path, STATS), temperature=0.1, min_pixels=3000)
    totals = {0: 265000, 13: 9000, 18: 3500}
    freq = {c: n / sum(totals.values()) for c, n in totals.items()}
    logits = {c: (1 - f) / 0.1 for c, f in freq.items()}
    norm = sum(np.exp(v) for v in logits.values())
    for c in totals:
        assert sampler.probability(c) == pytest.approx(np.exp(logits[c]) / norm, rel=1e-9)
    assert sampler.probabilities.sum() == pytest.approx(1.0)


def test_class_weights_are_the_square_root_of_median_frequency_balancing_clipped(tmp_path):
    weights = class_weights(_write(tmp_path, STATS), max_weight=2.0)
    totals = {0: 265000, 13: 9000, 18: 3500}
    median = np.median([n / sum(totals.values()) for n in totals.values()])  # car's frequency
    assert weights[0] == pytest.approx(np.sqrt(median * sum(totals.values()) / 265000))
    assert weights[13] == pytest.approx(1.0)
    assert weights[18] == pytest.approx(min(2.0, np.sqrt(9000 / 3500)))
    assert weights[1] == 0.0 and len(weights) == 19  # absent from the data


def test_rarer_classes_get_higher_probability(tmp_path):
    sampler = RareClassSampler(_write(tmp_path, STATS), min_pixels=3000)
    assert sampler.probability(18) > sampler.probability(13) > sampler.probability(0)
    assert sampler.classes == (18, 13, 0)  # rarest first


def test_lower_temperature_sharpens_towards_the_rarest_class(tmp_path):
    path = _write(tmp_path, STATS)
    hot = RareClassSampler(path, temperature=1.0, min_pixels=3000)
    cold = RareClassSampler(path, temperature=0.01, min_pixels=3000)
    assert cold.probability(18) > hot.probability(18)
    assert cold.probability(0) < hot.probability(0)


def test_classes_absent_from_the_data_are_never_drawn(tmp_path):
    sampler = RareClassSampler(_write(tmp_path, STATS), min_pixels=3000)
    assert sampler.probability(5) == 0.0 and 5 not in sampler.classes


def test_candidate_frames_need_at_least_min_pixels_of_the_class(tmp_path):
    sampler = RareClassSampler(_write(tmp_path, STATS), min_pixels=4000)
    assert sampler.candidates[13] == ["labels/00001_labelTrainIds.png", "labels/00002_labelTrainIds.png"]
    stricter = RareClassSampler(_write(tmp_path, STATS), min_pixels=4001)
    assert stricter.candidates[13] == ["labels/00001_labelTrainIds.png"]


def test_class_without_any_candidate_frame_is_dropped_and_the_rest_renormalised(tmp_path):
    sampler = RareClassSampler(_write(tmp_path, STATS), min_pixels=4000)
    assert sampler.dropped_classes == (18,)
    assert sampler.classes == (13, 0)
    assert sampler.probabilities.sum() == pytest.approx(1.0)


def test_min_pixels_above_every_count_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="min_pixels"):
        RareClassSampler(_write(tmp_path, STATS), min_pixels=10**6)


def test_drawn_file_is_a_candidate_of_the_drawn_class(tmp_path):
    sampler = RareClassSampler(_write(tmp_path, STATS), min_pixels=3000, seed=0)
    for _ in range(50):
        class_id, file = sampler.sample()
        assert file in sampler.candidates[class_id]


def test_draws_follow_the_class_probabilities(tmp_path):
    sampler = RareClassSampler(_write(tmp_path, STATS), temperature=0.5, min_pixels=3000, seed=1)
    counts = Counter(sampler.sample()[0] for _ in range(3000))
    for c in sampler.classes:
        assert counts[c] / 3000 == pytest.approx(sampler.probability(c), abs=0.03)


def test_sampler_is_deterministic_for_a_seed(tmp_path):
    path = _write(tmp_path, STATS)
    a = RareClassSampler(path, temperature=0.5, min_pixels=3000, seed=4)
    b = RareClassSampler(path, temperature=0.5, min_pixels=3000, seed=4)
    c = RareClassSampler(path, temperature=0.5, min_pixels=3000, seed=5)
    draws_a, draws_b, draws_c = ([s.sample() for _ in range(30)] for s in (a, b, c))
    assert draws_a == draws_b and draws_a != draws_c


def test_sample_with_an_explicit_generator_depends_only_on_that_generator(tmp_path):
    sampler = RareClassSampler(_write(tmp_path, STATS), temperature=0.5, min_pixels=3000, seed=0)
    sampler.sample()  # advancing the internal stream must not matter
    assert sampler.sample(np.random.default_rng(9)) == RareClassSampler(
        _write(tmp_path, STATS), temperature=0.5, min_pixels=3000, seed=123
    ).sample(np.random.default_rng(9))


def test_stats_path_may_be_the_dataset_folder(tmp_path):
    _write(tmp_path, STATS)
    assert RareClassSampler(tmp_path, min_pixels=3000).classes == (18, 13, 0)


def test_ignore_class_counts_in_the_stats_are_left_out(tmp_path):
    entries = [dict(STATS[0], **{"255": 10**7}), STATS[1]]
    frames = load_class_stats(_write(tmp_path, entries))
    assert 255 not in frames[0]["counts"]
    assert 255 not in RareClassSampler(tmp_path, min_pixels=3000).classes


def test_missing_stats_file_tells_the_user_to_run_prepare_data(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"sample_class_stats.json not found.*run `cicld prepare-data gta5 "):
        RareClassSampler(tmp_path / "sample_class_stats.json")


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"file": "x"}), "non-empty JSON list"),
        (json.dumps([]), "non-empty JSON list"),
        (json.dumps([{"0": 5}]), 'entry 0 is not an object with a "file"'),
        (json.dumps([STATS[0], {"file": "a", "road": 5}]), "entry 1 has class key 'road'"),
        (json.dumps([{"file": "a", "19": 5}]), "class key '19'"),
        (json.dumps([{"file": "a", "3": -1}]), "pixel count -1"),
        (json.dumps([{"file": "a", "3": 2.5}]), "pixel count 2.5"),
    ],
)
def test_malformed_stats_are_a_data_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "sample_class_stats.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        RareClassSampler(path, min_pixels=1)
    assert str(path) in str(info.value)


def test_stats_counting_no_pixels_are_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no labelled pixels"):
        RareClassSampler(_write(tmp_path, [{"file": "a"}]), min_pixels=1)


def test_temperature_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="temperature"):
        RareClassSampler(_write(tmp_path, STATS), temperature=0)
