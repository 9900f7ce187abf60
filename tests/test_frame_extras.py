"""Text and status side channels in-process: through the batcher, adaptive reporting (strings on
change, never aggregated), `tail`'s sample view, and the OPC UA driver against the in-process
simulator (String variables carried, a string tag on a number refused, StatusCodes kept)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from asyncua import ua
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.opcua.driver import OpcUaDriver
from edge_agent.batcher import Batcher
from edge_agent.config.loader import load_config
from edge_agent.filters.engine import DeviceFilters
from edge_agent.filters.stage import DeviceStage
from edge_agent.frame.codec import decode_frame, encode_frame
from edge_agent.frame.model import Block, Frame
from edge_agent.samples import QUALITY_BAD_COMM, QUALITY_BAD_CONFIG, QUALITY_GOOD, Batch, text_column
from edge_agent.tail import _unit, frame_samples, units_of
from simulators.opcua.server import OpcUaSimServer
from tests.conftest import async_wait_for
from tests.test_opcua_driver import Collector, device, running, stop

SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC
BOOT = b"\x01" * 16


def text_batch(ts: list[int], texts: list[str | None], values: list[float], quality: list[int] | None = None,
               status: list[int] | None = None) -> Batch:
    """Rows of a 2-tag device: (num, sn); sn is a string tag."""
    n = len(ts)
    b = Batch.empty("plc", n, 2)
    b.ts[:] = np.asarray(ts)[:, None]
    b.values[:, 0] = values
    b.quality[:] = 0
    if quality is not None:
        b.quality[:, 1] = quality
    b.text = {1: text_column(texts)}
    if status is not None:
        b.status = np.zeros((n, 2), np.uint32)
        b.status[:, 0] = status
    return b


def decoded(blocks: list[Block]) -> list[Block]:
    return decode_frame(encode_frame(Frame("gw", BOOT, 1, 0, blocks))).blocks


def samples_of(blocks: list[Block], tag: str) -> list[tuple[int, object, int]]:
    """(ts, text or value, status) of one tag across blocks, in time order."""
    out = []
    for b in blocks:
        if tag in b.tags:
            j = b.tags.index(tag)
            for i in range(b.ts.shape[0]):
                v = b.text[j][i] if j in b.text else float(b.values[i, j])
                st = int(b.status[i, j]) if b.status is not None else 0
                out.append((int(b.ts[i]), v, st))
    return sorted(out, key=lambda x: x[0])


async def test_batcher_concatenates_and_splits_text_and_status():
    closed: list[list[Block]] = []
    batcher = Batcher([("plc", ("num", "sn"), ("float64", "string"))], 10**6, 3600 * SEC, closed.append)
    batcher.add(text_batch([T0], ["A"], [1.0]))  # no status column at all
    batcher.add(text_batch([T0 + SEC], [None], [2.0], quality=[QUALITY_BAD_COMM], status=[0x80000000]))
    b = text_batch([T0 + 2 * SEC], ["B"], [3.0])
    b.ts[0, 1] += 5  # the string came from another request: its own time column
    b.text = None  # and a batch without the text channel (the read failed) still concatenates
    batcher.add(b)
    batcher.close()
    (blocks,) = closed
    assert [blk.tags for blk in blocks] == [("num",), ("sn",)]  # split by time column, text followed
    got = decoded(blocks)
    assert [s[1:] for s in samples_of(got, "sn")] == [("A", 0), (None, 0), (None, 0)]
    assert [s[1:] for s in samples_of(got, "num")] == [(1.0, 0), (2.0, 0x80000000), (3.0, 0)]


DEADBAND_CONFIG = """
[agent]
id = "gw"
state_dir = "{state}"

[filters.band]
kind = "deadband"
absolute = 10.0

[filters.lim]
kind = "limits"
hi = 7.5

[reporting.quiet]
mode = "{mode}"
{interval}pre_trigger = "0s"
post_trigger = "0s"

[[devices]]
name = "plc"
protocol = "modbus"
endpoint = "tcp://127.0.0.1:5020"

[[devices.tags]]
name = "num"
address = "hr:0"
type = "float64"
filters = ["band", "lim"]
reporting = "quiet"

[[devices.tags]]
name = "sn"
address = "hr:10"
type = "string"
length = 4
reporting = "quiet"
"""


@pytest.mark.parametrize("mode", ["deadband", "aggregate"])
def test_reporting_sends_strings_on_change_and_never_aggregates_them(tmp_path: Path, mode: str):
    (tmp_path / "c.toml").write_text(DEADBAND_CONFIG.replace("{state}", str(tmp_path / "s")).replace("{mode}", mode)
                                      .replace("{interval}", 'interval = "10s"\n' if mode == "aggregate" else ""))
    cfg = load_config(tmp_path / "c.toml")
    dev = cfg.device("plc")
    stage = DeviceStage(DeviceFilters(dev, cfg.filters), dev, cfg.reporting, ("float64", "string"))
    texts = ["A", "A", "A", "B", "B", None, None, "B", "C", "C"]
    quality = [0, 0, 0, 0, 0, QUALITY_BAD_COMM, QUALITY_BAD_COMM, 0, 0, 0]
    blocks: list[Block] = []
    full_rate: list[int] = []
    for i in range(len(texts)):
        batches, reduced, _ = stage.run(text_batch([T0 + i * SEC], [texts[i]], [float(i)], quality=[quality[i]]))
        for b in batches:
            assert b.text is None, "string tags never go through the full-rate path"
            full_rate += [(int(t) - T0) // SEC for t in b.ts[:, 0]]
        blocks += reduced
    blocks += stage.flush()
    assert full_rate == [8, 9], "num above its limit from row 8: the group goes at full rate"
    got = decoded(blocks)
    sent = samples_of(got, "sn")
    # On change of text or quality, anomaly or not: A, B, the failed read (missing), B again, C.
    assert [(t - T0) // SEC for t, _, _ in sent] == [0, 3, 5, 7, 8]
    assert [v for _, v, _ in sent] == ["A", "B", None, "B", "C"]
    assert all(b.types[b.tags.index("sn")] == "string" for b in got if "sn" in b.tags)
    assert not any(tag.startswith("sn@") for b in got for tag in b.tags), "strings are never aggregated"


def test_tail_prints_text_status_and_units():
    blk = Block("plc", ("num", "sn"), ("int16", "string"), np.array([T0, T0 + SEC]),
                np.array([[1.0, np.nan], [np.nan, np.nan]]), np.array([[0, 0], [0x82, QUALITY_BAD_COMM]], np.uint8),
                np.zeros((2, 2), np.uint32), status=np.array([[0, 0], [0x808C0000, 0]], np.uint32),
                text={1: text_column(["SN-1", None])})
    rows = list(frame_samples(decode_frame(encode_frame(Frame("gw", BOOT, 9, 0, [blk])))))
    assert [(r["tag"], r["value"], r["status"]) for r in rows] == [
        ("num", 1, 0), ("num", None, 0x808C0000), ("sn", "SN-1", 0), ("sn", None, 0)]
    plain = Block("plc", ("num",), ("int16",), np.array([T0]), np.array([[1.0]]), np.zeros((1, 1), np.uint8),
                  np.zeros((1, 1), np.uint32))
    assert "status" not in next(frame_samples(Frame("gw", BOOT, 9, 0, [plain])))
    units = units_of({"devices": [{"name": "plc", "tags": [{"name": "num", "type": "int16", "eng_unit": "bar"},
                                                          {"name": "sn", "type": "string"}]}]})
    assert units == {("plc", "num"): "bar"}
    assert _unit(units, "plc", "num@mean") == "bar" and _unit(units, "plc", "num@count") is None


@pytest.fixture
async def sim():
    server = OpcUaSimServer(seed=3)
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_opcua_string_tags_and_status_codes_reach_the_batch(sim, mode):
    sim.set_status("boiler.pressure", ua.StatusCodes.BadSensorFailure)
    tags = [
        {"name": "serial", "node": "ns=plant;s=Plant.serial", "type": "string"},
        {"name": "pressure_as_text", "node": "ns=plant;s=boiler.temp_supply", "type": "string"},
        {"name": "pressure", "node": "ns=plant;s=boiler.pressure", "type": "float32"},
        {"name": "temp", "node": "ns=plant;s=boiler.temp_return", "type": "float32"},
    ]
    got = Collector(len(tags))
    drv = OpcUaDriver(device(sim.endpoint, tags, mode=mode), got)
    task = await running(drv)
    try:
        await async_wait_for(lambda: len(got.latest) == len(tags) and got.latest[2][2] == 0x82, 10,
                             "a sample of every tag, and the bad one")
    finally:
        await stop(task)
    text: dict[int, list] = {}
    status: dict[int, set[int]] = {}
    for b in got.batches:
        cols = b.columns if b.columns is not None else np.arange(len(tags))
        for p, j in enumerate(cols.tolist()):
            if b.text and p in b.text:
                text.setdefault(j, []).extend(b.text[p].tolist())
            status.setdefault(j, set()).update(b.status[:, p].tolist() if b.status is not None else [0])
    assert set(text[0]) == {"SIM-0001"} and got.latest[0][2] == QUALITY_GOOD and np.isnan(got.latest[0][1])
    assert 1 not in text, "a string tag on a Double variable is refused, not converted"
    assert got.latest[1][2] == QUALITY_BAD_CONFIG and status[1] == {ua.StatusCodes.BadTypeMismatch}
    # (the server's initial value, before its first tick, may be Good: status 0 then)
    assert status[2] - {0} == {ua.StatusCodes.BadSensorFailure}
    assert status[3] == {0} and status[0] == {0}
    assert 3 not in text and 2 not in text, "numeric tags never get a text column"


def test_a_string_tag_cannot_have_filters(tmp_path: Path):
    from edge_agent.config.loader import ConfigError

    (tmp_path / "c.toml").write_text(f"""
[agent]
id = "gw"
state_dir = "{tmp_path / 's'}"

[filters.lim]
kind = "limits"
hi = 1.0

[[devices]]
name = "plc"
protocol = "modbus"
endpoint = "tcp://127.0.0.1:5020"

[[devices.tags]]
name = "sn"
address = "hr:0"
type = "string"
length = 4
filters = ["lim"]
""")
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "c.toml")
    assert "devices[0].tags[0]: filters judge numbers; a string tag cannot have filters" in str(exc.value)



def test_simulator_string_points_encode_their_text_and_refuse_what_does_not_fit(tmp_path: Path):
    from simulators.plant import ProfileError, encode, load_profile, text_at, value_at

    base = """[[devices]]
name = "d"
unit = 1

[[devices.points]]
name = "sn"
address = "hr:0"
type = "string"
length = 2
byte_order = "{order}"
texts = [{texts}]
signal = {{ kind = "constant", value = 1 }}
"""
    (tmp_path / "p.toml").write_text(base.format(order="ABCD", texts='"AB", "xyz"'))
    (p,) = load_profile(tmp_path / "p.toml")
    assert text_at(p, T0, 1) == "xyz" and encode(p, value_at(p, T0, 1)) == (0x7879, 0x7A00)
    (tmp_path / "p.toml").write_text(base.format(order="BADC", texts='"AB", "xyz"'))
    (p,) = load_profile(tmp_path / "p.toml")
    assert encode(p, value_at(p, T0, 1)) == (0x7978, 0x007A)
    (tmp_path / "p.toml").write_text(base.format(order="ABCD", texts='"12345"'))
    with pytest.raises(ProfileError, match="text '12345' does not fit 2 registers"):
        load_profile(tmp_path / "p.toml")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.sampled_from(["A", "B", "", None]), st.sampled_from([0, 0x81])), max_size=40),
       sizes=st.lists(st.integers(1, 5), min_size=1, max_size=40))
def test_strings_on_change_match_a_plain_reference(tmp_path_factory, rows, sizes):
    """Whatever the batch sizes, the reporter sends exactly the rows whose (text, quality) differs from
    the previous row's: a plain Python reference of "on change"."""
    tmp = tmp_path_factory.mktemp("oc")
    (tmp / "c.toml").write_text(DEADBAND_CONFIG.replace("{state}", str(tmp / "s")).replace("{mode}", "deadband")
                                .replace("{interval}", ""))
    cfg = load_config(tmp / "c.toml")
    dev = cfg.device("plc")
    stage = DeviceStage(DeviceFilters(dev, cfg.filters), dev, cfg.reporting, ("float64", "string"))
    blocks: list[Block] = []
    i, s = 0, 0
    while i < len(rows):
        part = rows[i:i + sizes[s % len(sizes)]]
        ts = [T0 + (i + r) * SEC for r in range(len(part))]
        _, reduced, _ = stage.run(text_batch(ts, [t for t, _ in part], [1.0] * len(part), quality=[q for _, q in part]))
        blocks += reduced
        i, s = i + len(part), s + 1
    blocks += stage.flush()
    want = [(T0 + r * SEC, t) for r, (t, q) in enumerate(rows) if r == 0 or (t, q) != rows[r - 1]]
    assert [(t, v) for t, v, _ in samples_of(decoded(blocks) if blocks else [], "sn")] == want
