"""The filter engine as the agent runs it: config in, flags, scores, events, snapshots and adaptive
reporting out, through the real batcher and frame codec."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.batcher import Batcher
from edge_agent.config.loader import ConfigError, load_config
from edge_agent.config.models import DeviceBase, MultivariateFilter, TagBase
from edge_agent.filters import flags as F
from edge_agent.filters.engine import DeviceFilters
from edge_agent.filters.snapshot import restore_snapshots, save_snapshot
from edge_agent.filters.stage import DeviceStage
from edge_agent.frame.codec import decode_frame, encode_frame
from edge_agent.frame.model import Block, Frame
from edge_agent.samples import Batch

T0 = 1_700_000_000_000_000_000
SEC = 1_000_000_000

CONFIG = """
[agent]
id = "gw"
state_dir = "{state}"

[filters.range]
kind = "limits"
lo = 0.0
hi = 100.0
hihi = 120.0

[filters.z]
kind = "ewma_zscore"
alpha = 0.1
threshold = 5.0
warmup = 20
event_interval = "10s"

[filters.spike]
kind = "hampel"
window = 15
n_sigmas = 6.0
send_scores = false

[filters.stuck]
kind = "flatline"
samples = 30

[filters.drift]
kind = "cusum"
warmup = 30

[filters.jump]
kind = "rate_of_change"
max_rate = 50.0

[filters.db]
kind = "deadband"
absolute = 0.5
max_silence = "20s"

[filters.pair]
kind = "multivariate"
training = 100

[reporting.quiet]
mode = "deadband"
pre_trigger = "5s"
post_trigger = "5s"

[[devices]]
name = "plc"
protocol = "synthetic"

[[devices.tags]]
name = "a"
filters = ["range", "z", "spike", "stuck", "drift", "jump", "pair", "db"]
reporting = "quiet"

[[devices.tags]]
name = "b"
filters = ["pair", "db"]
reporting = "quiet"

[[devices.tags]]
name = "c"
filters = ["range"]
"""


def config(tmp_path: Path, text: str = CONFIG):
    path = tmp_path / "plant.toml"
    path.write_text(text.replace("{state}", str(tmp_path / "state")))
    return load_config(path)


def signal(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = 50 + rng.normal(0, 1, n)
    b = 2 * a + rng.normal(0, 0.5, n)
    c = 10 + rng.normal(0, 1, n)
    return np.stack([a, b, c], axis=1)


def batch_of(values: np.ndarray, start: int = 0, columns: np.ndarray | None = None) -> Batch:
    n, k = values.shape
    b = Batch.empty("plc", n, k, columns=columns)
    b.values[:] = values
    b.quality[:] = 0
    b.ts[:] = T0 + (start + np.arange(n))[:, None] * SEC
    return b


def test_every_kind_loads_and_flags_its_anomaly(tmp_path):
    cfg = config(tmp_path)
    dev = cfg.device("plc")
    stage = DeviceStage(DeviceFilters(dev, cfg.filters), dev, cfg.reporting, ("float64",) * 3)
    x = signal(400)
    x[250, 0] = 130.0  # spike: limits (hihi too), z-score, hampel, rate of change
    x[300:340, 0] = x[299, 0]  # stuck
    x[380:, 1] = 0.0  # b leaves its correlation with a
    fired = np.zeros(3, np.uint32)
    events = []
    for start in range(0, 400, 10):  # polls arrive in small batches; state carries across them
        b = batch_of(x[start:start + 10], start)
        _, _, ev = stage.run(b)
        events += ev
        fired |= np.bitwise_or.reduce(b.flags, axis=0)
        if start == 250:
            spike = b.flags[0, 0]
            assert spike & F.LIMITS and spike & F.LIMITS_SEVERE and spike & F.EWMA_ZSCORE
            assert spike & F.HAMPEL and spike & F.RATE_OF_CHANGE
            assert b.scores is not None and np.isnan(b.scores["hampel"]).all()  # send_scores = false
            assert np.isfinite(stage.last_scores["hampel"][0, 0])  # but computed for events
    for bit in (F.FLATLINE, F.WARMUP, F.DEADBAND, F.MULTIVARIATE_SPE):
        assert fired[0] & bit or fired[1] & bit, F.describe(bit)
    assert not fired[2] & F.ANOMALY  # c is normal and only has limits
    kinds = {(e["tag"], e["flag"]) for e in events}
    assert {("a", "limits"), ("a", "limits_severe"), ("a", "ewma_zscore"), ("a", "hampel"),
            ("a", "flatline"), ("a", "rate_of_change")} <= kinds
    assert any(e["flag"] == "multivariate_spe" and e["ts"] == T0 + 380 * SEC for e in events)
    hihi = next(e for e in events if e["flag"] == "limits_severe")
    assert hihi == {**hihi, "device": "plc", "filter": "range", "value": 130.0, "threshold": 120.0,
                    "ts": T0 + 250 * SEC}
    json.dumps(events, allow_nan=False)  # valid JSON for any consumer


def test_a_stuck_alarm_raises_one_event_and_flapping_is_rate_limited(tmp_path):
    cfg = config(tmp_path)
    dev = cfg.device("plc")
    stage = DeviceStage(DeviceFilters(dev, cfg.filters), dev, cfg.reporting, ("float64",) * 3)
    x = signal(260)
    x[50:100, 2] = 150.0  # c above its limit for 50 s: one alarm
    x[120:160:2, 2] = 150.0  # then flapping every other second for 40 s
    x[60, 2] = np.nan  # a dropout inside the alarm is not a new alarm
    b = batch_of(x[:190])
    b.quality[70, 2] = 0x81
    _, _, events = stage.run(b)
    ev = [e for e in events if e["tag"] == "c" and e["flag"] == "limits"]
    # 20 flaps in 40 s with at most one event a minute (the default): the first, then 19 held back
    assert [e["ts"] for e in ev] == [T0 + 50 * SEC, T0 + 120 * SEC]
    assert stage.events.suppressed[F.LIMITS][2] == 19
    x[200:202, 2] = 150.0  # a minute later: the next event says how many were held back
    b = batch_of(x[190:], 190)
    _, _, events = stage.run(b)
    (late,) = [e for e in events if e["flag"] == "limits"]
    assert late["ts"] == T0 + 200 * SEC and late["suppressed"] == 19


def test_subset_batches_use_and_keep_each_tags_state(tmp_path):
    cfg = config(tmp_path)
    dev = cfg.device("plc")
    whole = DeviceFilters(dev, cfg.filters)
    split = DeviceFilters(dev, cfg.filters)
    x = signal(300)
    x[200, 0] = 90.0
    for start in range(0, 300, 25):
        full = batch_of(x[start:start + 25], start)
        whole.process(full)
        parts = [batch_of(x[start:start + 25][:, cols], start, np.asarray(cols)) for cols in ([0, 1], [2])]
        for p in parts:
            split.process(p)
        np.testing.assert_array_equal(full.flags[:, [0, 1]], parts[0].flags)
        np.testing.assert_array_equal(full.flags[:, [2]], parts[1].flags)


def test_snapshot_restores_learned_state_and_changed_kinds_start_afresh(tmp_path):
    cfg = config(tmp_path)
    dev = cfg.device("plc")
    first = DeviceFilters(dev, cfg.filters)
    x = signal(300)
    first.process(batch_of(x[:200]))
    assert first.groups[0].model is not None
    state = tmp_path / "state"
    save_snapshot(state, "plc", first.snapshot())
    # A restart: the same config picks up where it left off (no warm-up flags, same judgement).
    again = DeviceFilters(dev, cfg.filters)
    restored = restore_snapshots(state, {"plc": again})["plc"]
    assert set(restored) >= {"ewma_zscore", "hampel", "cusum", "flatline", "multivariate:pair"}
    a, b = batch_of(x[200:]), batch_of(x[200:])
    first.process(a)
    again.process(b)
    np.testing.assert_array_equal(a.flags, b.flags)
    assert not (b.flags & F.WARMUP).any()
    # A changed z-score threshold: that kind re-learns, the others keep their state.
    changed = config(tmp_path, CONFIG.replace("threshold = 5.0", "threshold = 6.0"))
    fresh = DeviceFilters(changed.device("plc"), changed.filters)
    kinds = restore_snapshots(state, {"plc": fresh})["plc"]
    assert "ewma_zscore" not in kinds and "hampel" in kinds
    # A torn file is ignored, not fatal.
    (state / "filters" / "plc.npz").write_bytes(b"PK\x03\x04garbage")
    assert restore_snapshots(state, {"plc": DeviceFilters(dev, cfg.filters)}) == {}


async def test_adaptive_reporting_sends_the_anomaly_window_whole_and_deadband_reports_otherwise(tmp_path):
    cfg = config(tmp_path, CONFIG.replace("absolute = 0.5", "absolute = 6.0"))
    dev = cfg.device("plc")
    stage = DeviceStage(DeviceFilters(dev, cfg.filters), dev, cfg.reporting, ("float64",) * 3)
    closed: list[list[Block]] = []
    batcher = Batcher([("plc", ("a", "b", "c"), ("float64",) * 3)], 10**9, 3600 * SEC, closed.append)
    x = signal(600)
    x[400, 0] = 95.0  # one spike on a: rows 395..405 of a and b go whole
    for i in range(600):  # one poll per second
        batches, blocks, _ = stage.run(batch_of(x[i:i + 1], i))
        for part in batches:
            batcher.add(part)
        batcher.add_blocks(blocks)
    batcher.add_blocks(stage.flush())
    batcher.close()
    frame = decode_frame(encode_frame(Frame("gw", bytes(16), 1, 0, closed[0])))
    sent: dict[str, set[int]] = {"a": set(), "b": set(), "c": set()}
    for blk in frame.blocks:
        for j, tag in enumerate(blk.tags):
            sent[tag] |= {int((t - T0) // SEC) for t in blk.ts[~np.isnan(blk.values[:, j])]}
    assert sent["c"] == set(range(600))  # not in a reporting group: everything
    for tag in ("a", "b"):
        assert set(range(395, 406)) <= sent[tag]  # pre and post trigger windows, whole
        assert len(sent[tag]) < 600 * 0.5, len(sent[tag])  # the rest reduced by the deadband
        # max_silence = 20 s: never a longer gap outside the anomaly window
        assert max(np.diff(sorted(sent[tag]))) <= 20


def test_filter_config_errors_are_one_line_each(tmp_path, capsys):
    from edge_agent.cli import main

    bad = (CONFIG.replace('alpha = 0.1', 'alpha = 1.5')
           .replace('samples = 30', 'tolerance = 0.1')
           .replace('filters = ["range"]', 'filters = ["range", "z", "z2"]\nreporting = "loud"')
           + '\n[filters.z2]\nkind = "ewma_zscore"\n')
    path = tmp_path / "bad.toml"
    path.write_text(bad.replace("{state}", str(tmp_path)))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = err.value.problems
    assert f"{path}: filters.z.alpha: Input should be less than 1 (got 1.5)" in lines
    assert any("filters.stuck: a flatline filter needs samples, duration or both" in ln for ln in lines)
    assert any("devices[0].tags[2].filters: 'z' and 'z2' are both ewma_zscore filters" in ln for ln in lines)
    assert any("devices[0].tags[2].reporting: no reporting policy named 'loud'" in ln for ln in lines)
    assert all("\n" not in ln for ln in lines)
    assert main(["check", "-c", str(path)]) == 78
    assert "Traceback" not in capsys.readouterr().err


def test_multivariate_group_needs_two_tags_and_enough_training(tmp_path):
    one = CONFIG.replace('filters = ["pair", "db"]', 'filters = ["db"]')
    with pytest.raises(ConfigError, match="multivariate filter 'pair' needs at least 2 tags"):
        config(tmp_path, one)
    many = CONFIG.replace('filters = ["range"]', 'filters = ["range", "pair"]').replace(
        "training = 100", "training = 10")
    many += "".join(f'\n[[devices.tags]]\nname = "x{i}"\nfilters = ["pair"]\n' for i in range(8))
    with pytest.raises(ConfigError, match=r"filters\.pair\.training: 10 rows cannot train a model of 11 tags"):
        config(tmp_path, many)
    few = CONFIG.replace("training = 100", "training = 10")
    assert config(tmp_path, few).filters["pair"].training == 10


def test_baseline_file_must_match_the_group(tmp_path):
    np.savez(tmp_path / "b.npz", tags=np.array(["x", "y"]), mean=np.zeros(2), scale=np.ones(2),
             loadings=np.ones((2, 1)), eigenvalues=np.ones(1), t2_limit=1.0, spe_limit=1.0)
    spec = MultivariateFilter(kind="multivariate", baseline=tmp_path / "b.npz")
    dev = DeviceBase(name="d", protocol="x", tags=[TagBase(name="a", filters=["m"]), TagBase(name="b", filters=["m"])])
    with pytest.raises(ValueError, match=r"trained on tags \['x', 'y'\], the filter has \['a', 'b'\]"):
        DeviceFilters(dev, {"m": spec})


def _mv_device(groups: dict[str, list[int]], k: int) -> DeviceBase:
    names = {j: name for name, cols in groups.items() for j in cols}
    return DeviceBase(name="d", protocol="x", tags=[TagBase(name=f"t{j}", filters=[names[j]] if j in names else [])
                                                   for j in range(k)])


def test_all_groups_in_one_call_score_as_each_group_alone():
    """Groups of different sizes, components and training lengths on one device, interleaved columns,
    batches of every size, some holding only some tags: each group's flags, shares and statistics
    are exactly those of a device that has that group only, while others still train or lack tags."""
    specs = {"a": MultivariateFilter(kind="multivariate", training=20, components=1),
             "b": MultivariateFilter(kind="multivariate", training=45),
             "c": MultivariateFilter(kind="multivariate", training=70, components=3)}
    groups = {"a": [0, 5], "b": [1, 2, 3, 4, 9], "c": [6, 7, 8, 10]}
    k = 12
    together = DeviceFilters(_mv_device(groups, k), specs)
    alone = {name: DeviceFilters(_mv_device({name: cols}, k), {name: specs[name]}) for name, cols in groups.items()}
    rng = np.random.default_rng(11)
    mix = rng.normal(size=(k, k))
    t = 0
    for call in range(30):
        n = int(rng.integers(0, 9))
        x = rng.normal(size=(n, k)) @ mix * (4.0 if call > 24 else 1.0)
        x[rng.random((n, k)) < 0.03] = np.nan
        cols = np.sort(rng.permutation(k)[:int(rng.integers(3, k))]) if call % 4 == 3 else None
        runs = {}
        for key, engine in [("together", together), *alone.items()]:
            b = batch_of(x if cols is None else x[:, cols], t, cols)
            runs[key] = (b, engine.process(b).get("multivariate"))
        t += n
        b_all, s_all = runs["together"]
        for pos, (name, members) in enumerate(groups.items()):
            b_one, s_one = runs[name]
            g_all, g_one = together.groups[pos], alone[name].groups[0]
            assert g_all.name == name
            np.testing.assert_array_equal(g_all.last_t2, g_one.last_t2)
            np.testing.assert_array_equal(g_all.last_spe, g_one.last_spe)
            where = members if cols is None else [int(np.flatnonzero(cols == j)[0]) for j in members if j in cols]
            np.testing.assert_array_equal(b_all.flags[:, where], b_one.flags[:, where])
            if len(where) == len(members):  # a training row is never scored, even in the batch that fits
                assert np.isnan(g_all.last_t2[(b_all.flags[:, where[0]] & F.WARMUP) != 0]).all()
            if s_one is not None:
                np.testing.assert_array_equal(s_all[:, where], s_one[:, where])
    assert all(g.model is not None for g in together.groups)
    assert together.fired["multivariate"] == sum(e.fired["multivariate"] for e in alone.values()) > 0


def test_a_snapshot_model_that_does_not_fit_its_group_is_turned_away():
    specs = {"m": MultivariateFilter(kind="multivariate", training=20)}
    dev = _mv_device({"m": [0, 1, 2]}, 3)
    first = DeviceFilters(dev, specs)
    rng = np.random.default_rng(4)
    first.process(batch_of(rng.normal(size=(30, 3)) @ rng.normal(size=(3, 3))))
    saved = first.snapshot()
    assert DeviceFilters(dev, specs).restore(saved) == ["multivariate:m"]
    saved["mv/m/model/loadings"] = np.ones((2, 1))  # would be read past its end
    again = DeviceFilters(dev, specs)
    assert again.restore(saved) == [] and again.groups[0].model is None


def test_bench_numpy_multivariate_does_the_engines_work():
    """`edge-agent bench filters` compares the kernel with a NumPy version: it must do the same work
    (each group's own model, usable rows, both flags, the per-tag shares), or the ratio means nothing."""
    from edge_agent.filters import bench

    names = [f"m{g}" for g in range(4)]
    per = bench.MULTIVARIATE_TAGS
    dev = DeviceBase(name="b", protocol="x", tags=[TagBase(name=f"t{j}", filters=[names[j // per]])
                                                  for j in range(len(names) * per)])
    engine = DeviceFilters(dev, {n: bench.SPECS["multivariate"] for n in names})
    rng = np.random.default_rng(0)
    engine.process(bench._batch(300, len(dev.tags), rng))
    b = bench._batch(20, len(dev.tags), rng, 300 * SEC)
    b.values[:10] *= 3.0
    b.values[2, 5] = np.nan
    b.quality[4, 40] = 0x81
    nb = Batch.empty("b", b.rows, len(dev.tags))
    nb.values[:], nb.quality[:] = b.values, b.quality
    shares = engine.process(b)["multivariate"]
    state = bench._np_state("multivariate", len(dev.tags), engine)
    bench._np_multivariate(nb, state)
    t2, spe, np_shares = state["out"]
    assert (b.flags & (F.MULTIVARIATE_T2 | F.MULTIVARIATE_SPE)).any()
    np.testing.assert_array_equal(nb.flags, b.flags)
    np.testing.assert_allclose(np_shares, shares, rtol=1e-5)
    np.testing.assert_allclose(t2.T, np.stack([g.last_t2 for g in engine.groups]), rtol=1e-9)
    np.testing.assert_allclose(spe.T, np.stack([g.last_spe for g in engine.groups]), rtol=1e-9)
