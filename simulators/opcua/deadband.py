"""DataChangeFilter deadbands as OPC UA Part 4 (7.22.2) defines them, for the simulator's asyncua server.

asyncua 2.1's server gets three things wrong, and a client's deadband cannot be tested against it:
- Percent deadband is not implemented: it logs a warning and reports every change.
- Absolute deadband compares each sample with the previous *sample*, not with the last *reported*
  value, so a signal that drifts slowly never crosses the band however far it drifts.
- A change of StatusCode alone is swallowed by a deadband (the value did not move enough), though a
  StatusValue trigger must report it.

`install()` replaces the two methods of asyncua's MonitoredItemService that decide this (the rest of
the server is asyncua's own). Percent deadband needs the node's EURange (Part 8 5.3.2.2): the
simulator registers each analog node's EURange span on its address space as `eu_spans`; a Percent
filter on a node without one is refused with BadFilterNotAllowed, as the specification requires.
"""

from __future__ import annotations

from typing import Any

from asyncua import ua
from asyncua.server.monitored_item_service import MonitoredItemService, MonitoredItemValues

_NONE, _PERCENT = ua.DeadbandType.None_.value, ua.DeadbandType.Percent.value


def _kind(flt: ua.DataChangeFilter) -> int:
    """DeadbandType is a UInt32 on the wire: decoded filters carry a plain int, not the enum."""
    return int(getattr(flt.DeadbandType, "value", flt.DeadbandType))
_installed = False


def install() -> None:
    """Patch asyncua's server (idempotent). Only the simulator runs an asyncua server in a process."""
    global _installed
    if _installed:
        return
    original_create = MonitoredItemService._create_data_change_monitored_item

    async def create(self: MonitoredItemService, params: ua.MonitoredItemCreateRequest) -> ua.MonitoredItemCreateResult:
        flt = params.RequestedParameters.Filter
        span = None
        # Duck-typed: asyncua decodes into uaprotocol_auto.DataChangeFilter, not the ua.DataChangeFilter class.
        if hasattr(flt, "DeadbandType") and _kind(flt) == _PERCENT:
            span = getattr(self.aspace, "eu_spans", {}).get(params.ItemToMonitor.NodeId)
            code = None
            if span is None:
                code = ua.StatusCodes.BadFilterNotAllowed  # not an analog item with an EURange
            elif not 0 <= flt.DeadbandValue <= 100:
                code = ua.StatusCodes.BadDeadbandFilterInvalid
            if code is not None:
                result = ua.MonitoredItemCreateResult()
                result.StatusCode = ua.StatusCode(code)
                return result
        result = await original_create(self, params)
        mdata = self._monitored_items.get(result.MonitoredItemId)
        if mdata is not None and span is not None:
            mdata.mvalue.eu_span = span  # type: ignore[attr-defined]
        return result

    MonitoredItemService._create_data_change_monitored_item = create  # type: ignore[method-assign]
    MonitoredItemService._is_deadband_exceeded = _exceeded  # type: ignore[method-assign]
    _installed = True


def _exceeded(self: Any, values: MonitoredItemValues, flt: ua.DataChangeFilter) -> bool:
    """Called only once the value or status changed; True means report (and remember what was reported)."""
    cur = values.get_current_datavalue()
    last: ua.DataValue | None = getattr(values, "last_reported", None)
    report = True
    if (_kind(flt) != _NONE and last is not None and cur is not None
            and cur.StatusCode == last.StatusCode and cur.Value is not None and last.Value is not None
            and isinstance(cur.Value.Value, int | float) and isinstance(last.Value.Value, int | float)):
        band = flt.DeadbandValue
        if _kind(flt) == _PERCENT:
            band = band / 100.0 * getattr(values, "eu_span", 0.0)
        report = abs(float(cur.Value.Value) - float(last.Value.Value)) > band
    if report:
        values.last_reported = cur  # type: ignore[attr-defined]
    return report
