"""Synthetic data, splits, scaling, zero-copy windows, reverse windowing, the sealed test split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from madcluster_exp.config.schema import SyntheticDatasetConfig
from madcluster_exp.data import (
    DataError,
    PointScoreAccumulator,
    SealedTest,
    SeriesSplit,
    TestAccessError,
    WindowSet,
    load_dataset,
    prepare,
)
from madcluster_exp.data.synthetic import ANOMALY_KINDS, make_synthetic
from madcluster_exp.data.windows import window_starts


def test_synthetic_is_deterministic_per_seed():
    a = make_synthetic(n_entities=2, train_length=500, test_length=500, seed=3)
    b = make_synthetic(n_entities=2, train_length=500, test_length=500, seed=3)
    c = make_synthetic(n_entities=2, train_length=500, test_length=500, seed=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.train, y.train)
        np.testing.assert_array_equal(x.test, y.test)
        np.testing.assert_array_equal(x.test_labels, y.test_labels)
    assert not np.array_equal(a[0].test, c[0].test)


def test_synthetic_shapes_kinds_and_ratio():
    entities = make_synthetic(
        n_entities=3, n_channels=5, train_length=2000, test_length=3000, anomaly_ratio=0.06, seed=0
    )
    assert [e.name for e in entities] == ["entity-0", "entity-1", "entity-2"]
    for e in entities:
        assert e.train.shape == (2000, 5) and e.test.shape == (3000, 5)
        assert e.train.dtype == np.float32
        ratio = e.test_labels.mean()
        assert 0.06 <= ratio <= 0.06 + 50 / 3000  # reaches the target, overshoots by < 1 event
        assert {a.kind for a in e.anomalies} == set(ANOMALY_KINDS)
        for a in e.anomalies:
            assert e.test_labels[a.start : a.end].all()
        collective = [a for a in e.anomalies if a.kind == "collective"]
        assert all(len(a.channels) >= 2 for a in collective)
    assert not np.allclose(entities[0].train, entities[1].train)


def test_synthetic_anomalies_change_the_signal():
    e = make_synthetic(n_entities=1, train_length=1000, test_length=2000, seed=1)[0]
    # Planted spikes deviate strongly from the train distribution.
    mu, sd = e.train.mean(0), e.train.std(0)
    for a in e.anomalies:
        if a.kind == "spike":
            ch = a.channels[0]
            assert abs(e.test[a.start, ch] - mu[ch]) > 2.5 * sd[ch]


def _dataset_cfg(**kw):
    base = dict(
        name="synthetic",
        n_entities=2,
        n_channels=3,
        train_length=400,
        test_length=300,
        anomaly_ratio=0.05,
        noise=0.1,
        seed=0,
        normalize="standard",
        val_fraction=0.25,
        train_stride=1,
        entities=None,
    )
    base.update(kw)
    return SyntheticDatasetConfig(**base)


def test_loader_keeps_labels_out_of_train_and_selects_entities(tmp_path):
    raw = load_dataset(_dataset_cfg(), tmp_path)
    assert raw.train.labels is None
    assert raw.entities == ["entity-0", "entity-1"]
    raw = load_dataset(_dataset_cfg(entities=["entity-1"]), tmp_path)
    assert raw.entities == ["entity-1"]
    with pytest.raises(DataError, match="entity-7"):
        load_dataset(_dataset_cfg(entities=["entity-7"]), tmp_path)


def test_validation_is_the_tail_after_a_one_window_gap(tmp_path):
    raw = load_dataset(_dataset_cfg(normalize="none"), tmp_path)
    window = 20
    data = prepare(raw, window, 0.25, "none")
    for seg_raw, seg_fit, seg_val in zip(
        raw.train.segments, data.train.segments, data.val.segments
    ):
        raw_vals = raw.train.values[seg_raw.start : seg_raw.end]
        fit_vals = data.train.values[seg_fit.start : seg_fit.end]
        val_vals = data.val.values[seg_val.start : seg_val.end]
        assert len(val_vals) == 100  # 25 % of 400
        np.testing.assert_array_equal(val_vals, raw_vals[-100:])
        np.testing.assert_array_equal(fit_vals, raw_vals[: len(fit_vals)])
        assert len(fit_vals) + window + len(val_vals) == len(raw_vals)  # exactly one window gap


def test_scaler_is_fitted_on_the_fitting_part_only(tmp_path):
    raw = load_dataset(_dataset_cfg(), tmp_path)
    data = prepare(raw, 20, 0.25, "standard")
    np.testing.assert_allclose(data.train.values.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(data.train.values.std(0), 1, atol=1e-4)
    # Changing the validation tail changes nothing in the fitted statistics.
    raw.train.values[-50:] += 1000.0
    data2 = prepare(raw, 20, 0.25, "standard")
    np.testing.assert_array_equal(data.scaler.shift, data2.scaler.shift)
    np.testing.assert_array_equal(data.scaler.scale, data2.scaler.scale)


def test_minmax_scaler_and_constant_channel():
    values = np.c_[np.arange(10.0), np.full(10, 3.0)].astype(np.float32)
    split = SeriesSplit.concat([("e", values, None)])
    from madcluster_exp.data import Scaler

    sc = Scaler.fit(split.values, "minmax")
    out = sc.transform(split).values
    assert out[:, 0].min() == 0 and out[:, 0].max() == 1
    np.testing.assert_array_equal(out[:, 1], 0)  # constant channel: centred, not divided by 0


def test_test_split_is_sealed_until_unsealed(tmp_path):
    raw = load_dataset(_dataset_cfg(), tmp_path)
    data = prepare(raw, 20, 0.25, "standard")
    with pytest.raises(TestAccessError):
        data.test.get()
    with pytest.raises(TestAccessError):
        raw.test.get()
    data.test.unseal()
    test = data.test.get()
    assert test.labels is not None and len(test) == 600
    # Test is scaled with the training statistics, not its own.
    np.testing.assert_allclose(
        test.values, (raw.test.get().values - data.scaler.shift) / data.scaler.scale, rtol=1e-6
    )


def test_windows_are_zero_copy_views_and_match_slices():
    values = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    split = SeriesSplit.concat([("a", values[:30], None), ("b", values[30:], None)])
    ws = WindowSet(split, window=8, stride=1)
    assert ws.view.untyped_storage().data_ptr() == split.values.ctypes.data
    assert ws.view.shape == (50 - 8 + 1, 3, 8)
    # No window straddles the entity boundary at 30.
    assert all(s + 8 <= 30 or s >= 30 for s in ws.starts)
    assert len(ws) == (30 - 8 + 1) + (20 - 8 + 1)
    idx = np.array([0, 5, len(ws) - 1])
    batch = ws.batch(idx)
    assert batch.shape == (3, 8, 3)
    for b, i in enumerate(idx):
        s = ws.starts[i]
        np.testing.assert_array_equal(batch[b].numpy(), split.values[s : s + 8])


def test_window_starts_cover_the_tail_when_scoring():
    split = SeriesSplit.concat([("a", np.zeros((23, 1), np.float32), None)])
    assert window_starts(split, 5, 4, cover_tail=False).tolist() == [0, 4, 8, 12, 16]
    assert window_starts(split, 5, 4, cover_tail=True).tolist() == [0, 4, 8, 12, 16, 18]
    with pytest.raises(DataError, match="shorter than one window"):
        window_starts(split, 30, 1, cover_tail=False)


def test_shuffled_batches_follow_the_generator_only():
    split = SeriesSplit.concat([("a", np.arange(200, dtype=np.float32).reshape(-1, 1), None)])
    ws = WindowSet(split, 10)

    def order(seed):
        return [i.tolist() for i, _ in ws.batches(16, True, torch.Generator().manual_seed(seed))]

    torch.manual_seed(0)
    a = order(1)
    torch.manual_seed(99)  # the global RNG must not matter
    assert order(1) == a
    assert order(2) != a


@pytest.mark.parametrize("aggregate", ["mean", "max", "last"])
def test_point_scores_from_overlapping_windows(aggregate):
    rng = np.random.default_rng(0)
    n, T = 37, 6
    split = SeriesSplit.concat(
        [("a", np.zeros((20, 1), np.float32), None), ("b", np.zeros((17, 1), np.float32), None)]
    )
    starts = window_starts(split, T, 3, cover_tail=True)
    scores = rng.normal(size=(len(starts), T))
    acc = PointScoreAccumulator(n, T, aggregate)
    for chunk in np.array_split(np.arange(len(starts)), 4):
        acc.add(starts[chunk], scores[chunk])
    got = acc.result()
    expected = np.empty(n)
    for p in range(n):
        vals = [scores[w, p - s] for w, s in enumerate(starts) if s <= p < s + T]
        if aggregate == "last":  # the window in which p sits latest (largest offset p - s)
            cover = [(p - s, w) for w, s in enumerate(starts) if s <= p < s + T]
            expected[p] = scores[max(cover)[1], max(cover)[0]]
        else:
            expected[p] = np.mean(vals) if aggregate == "mean" else np.max(vals)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_non_finite_training_data_is_named(tmp_path):
    raw = load_dataset(_dataset_cfg(), tmp_path)
    raw.train.values[123, 2] = np.nan
    with pytest.raises(DataError, match=r"row 123, column 2"):
        prepare(raw, 20, 0.25, "standard")


def test_too_short_series_gives_a_clear_error(tmp_path):
    raw = load_dataset(_dataset_cfg(train_length=100), tmp_path)
    with pytest.raises(DataError, match=r"too short for window=50"):
        prepare(raw, 50, 0.25, "standard")


def test_label_length_mismatch_is_named():
    with pytest.raises(DataError, match="3 labels for 4 rows"):
        SeriesSplit(np.zeros((4, 1), np.float32), [], np.zeros(3), "x.csv")


def test_sealed_test_caches_after_unseal():
    calls = []
    sealed = SealedTest(
        lambda: calls.append(1) or SeriesSplit.concat([("a", np.zeros((5, 1)), np.zeros(5))]), "d"
    )
    sealed.unseal()
    sealed.get()
    sealed.get()
    assert calls == [1]
