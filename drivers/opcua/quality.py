"""OPC UA StatusCode (32 bits) to our quality byte.

The top two bits of a StatusCode are its severity (00 good, 01 uncertain, 10 bad), which maps
directly onto our quality families. Within a family the low six bits of our byte give a reason:
the generic reasons of edge_agent/samples.py where the meaning is the same as for Modbus (so a
consumer's "bad comm" alarm works for both protocols), and a few OPC UA reasons in the uncertain
range, which samples.py leaves to drivers. Every code not named here maps to its family's generic byte.

The byte loses the exact code: the driver keeps the last full StatusCode of every tag
(OpcUaDriver.status) and counts bad and uncertain codes by name in its stats.
"""

from __future__ import annotations

from edge_agent.samples import (
    QUALITY_BAD,
    QUALITY_BAD_COMM,
    QUALITY_BAD_CONFIG,
    QUALITY_BAD_DECODE,
    QUALITY_BAD_DEVICE,
    QUALITY_GOOD,
    QUALITY_UNCERTAIN,
)

# Uncertain reasons (0x40 is the generic uncertain byte).
QUALITY_UNCERTAIN_LAST_USABLE = 0x41  # the server has no fresh value; this is the last good one
QUALITY_UNCERTAIN_INACCURATE = 0x42  # sensor not accurate, out of its range, or being calibrated
QUALITY_UNCERTAIN_SUBSTITUTE = 0x43  # not measured: a substitute or an initial value

# Severity bits of a StatusCode.
_SEVERITY_MASK = 0xC0000000
_UNCERTAIN = 0x40000000
_BAD = 0x80000000

# Sub-codes by the code's top 16 bits (the low 16 are info bits that do not change the meaning).
_BY_CODE: dict[int, int] = {
    # uncertain
    0x408F0000: QUALITY_UNCERTAIN_LAST_USABLE,  # UncertainNoCommunicationLastUsableValue
    0x40900000: QUALITY_UNCERTAIN_LAST_USABLE,  # UncertainLastUsableValue
    0x40910000: QUALITY_UNCERTAIN_SUBSTITUTE,  # UncertainSubstituteValue
    0x40920000: QUALITY_UNCERTAIN_SUBSTITUTE,  # UncertainInitialValue
    0x40930000: QUALITY_UNCERTAIN_INACCURATE,  # UncertainSensorNotAccurate
    0x40940000: QUALITY_UNCERTAIN_INACCURATE,  # UncertainEngineeringUnitsExceeded
    0x40950000: QUALITY_UNCERTAIN_INACCURATE,  # UncertainSubNormal
    0x420A0000: QUALITY_UNCERTAIN_INACCURATE,  # UncertainSensorCalibration
    # bad: communication (no usable answer from the server, or from the device behind it)
    0x80050000: QUALITY_BAD_COMM,  # BadCommunicationError
    0x800A0000: QUALITY_BAD_COMM,  # BadTimeout
    0x800D0000: QUALITY_BAD_COMM,  # BadServerNotConnected
    0x800E0000: QUALITY_BAD_COMM,  # BadServerHalted
    0x80250000: QUALITY_BAD_COMM,  # BadSessionIdInvalid
    0x80260000: QUALITY_BAD_COMM,  # BadSessionClosed
    0x80310000: QUALITY_BAD_COMM,  # BadNoCommunication
    0x80320000: QUALITY_BAD_COMM,  # BadWaitingForInitialData
    0x808A0000: QUALITY_BAD_COMM,  # BadNotConnected
    0x80AE0000: QUALITY_BAD_COMM,  # BadConnectionClosed
    0x800C0000: QUALITY_BAD_COMM,  # BadShutdown
    # bad: the tag's address or type is rejected (fix the config)
    0x80330000: QUALITY_BAD_CONFIG,  # BadNodeIdInvalid
    0x80340000: QUALITY_BAD_CONFIG,  # BadNodeIdUnknown
    0x80350000: QUALITY_BAD_CONFIG,  # BadAttributeIdInvalid
    0x80360000: QUALITY_BAD_CONFIG,  # BadIndexRangeInvalid
    0x803A0000: QUALITY_BAD_CONFIG,  # BadNotReadable
    0x801F0000: QUALITY_BAD_CONFIG,  # BadUserAccessDenied
    0x80740000: QUALITY_BAD_CONFIG,  # BadTypeMismatch
    0x80440000: QUALITY_BAD_CONFIG,  # BadMonitoredItemFilterUnsupported
    0x80450000: QUALITY_BAD_CONFIG,  # BadFilterNotAllowed
    0x805D0000: QUALITY_BAD_CONFIG,  # BadNodeIdRejected
    0x806F0000: QUALITY_BAD_CONFIG,  # BadNoMatch (a browse path leads nowhere)
    0x80600000: QUALITY_BAD_CONFIG,  # BadBrowseNameInvalid
    # bad: could not be decoded
    0x80070000: QUALITY_BAD_DECODE,  # BadDecodingError
    0x80060000: QUALITY_BAD_DECODE,  # BadEncodingError
}


def quality_of(status: int) -> int:
    """Quality byte for a 32-bit StatusCode; a specific bad code not listed is "device reported bad" (0x82)."""
    severity = status & _SEVERITY_MASK
    if severity == 0:
        return QUALITY_GOOD
    sub = _BY_CODE.get(status & 0xFFFF0000)
    if severity == _UNCERTAIN:
        return sub if sub is not None and sub < QUALITY_BAD else QUALITY_UNCERTAIN
    if sub is not None:
        return sub
    if severity != _BAD or status & 0xFFFF0000 == _BAD:
        return QUALITY_BAD  # the bare "Bad" code, or the reserved severity: nothing more to say
    return QUALITY_BAD_DEVICE


def is_bad(quality: int) -> bool:
    return quality >= QUALITY_BAD
