"""The only module that touches pymodbus: its API is renamed between minor versions, so it stays here
(3.10 renamed `slave=` to `device_id=`; pyproject pins the range this module is tested with).

Errors come out as two kinds the driver acts on differently: a DeviceException (the PLC answered, with
an exception code: keep the connection) and a LinkError (no usable answer: drop the connection, since
after a timeout the transaction ids may be out of step, and reconnect with backoff).
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.modbus.plan import ReadRequest

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # we log device faults ourselves, by name

ILLEGAL_DATA_ADDRESS = 2
EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value",
    4: "server device failure", 5: "acknowledge", 6: "server device busy",
    10: "gateway path unavailable", 11: "gateway target failed to respond",
}


class LinkError(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


class DeviceException(Exception):
    def __init__(self, code: int):
        super().__init__(f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})")
        self.code = code


class ModbusTcpLink:
    def __init__(self, host: str, port: int, timeout_s: float):
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._client: AsyncModbusTcpClient | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        self.close()
        # reconnect_delay=0: pymodbus must not reconnect behind our back; our backoff owns that.
        client = AsyncModbusTcpClient(
            self.host, port=self.port, timeout=self.timeout_s, retries=0, reconnect_delay=0
        )
        try:
            ok = await asyncio.wait_for(client.connect(), self.timeout_s * 2)
        except (TimeoutError, OSError, ModbusException) as exc:
            client.close()
            raise LinkError("connect", str(exc) or type(exc).__name__) from None
        if not ok:
            client.close()
            raise LinkError("connect", f"cannot connect to {self.host}:{self.port}")
        self._client = client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def read(self, req: ReadRequest) -> np.ndarray:
        """Registers as uint16, or bits as uint8 0/1, for the request's range."""
        client = self._client
        if client is None or not client.connected:
            raise LinkError("connection", "not connected")
        call = {
            1: client.read_coils, 2: client.read_discrete_inputs,
            3: client.read_holding_registers, 4: client.read_input_registers,
        }[req.function]
        try:
            # pymodbus times the request out itself; this outer guard only catches it hanging.
            rr = await asyncio.wait_for(call(req.start, count=req.count, device_id=req.unit), self.timeout_s + 1)
        except TimeoutError:
            raise LinkError("timeout", f"no answer within {self.timeout_s:g}s") from None
        except ModbusException as exc:
            if "No response" in str(exc):
                raise LinkError("timeout", f"no answer within {self.timeout_s:g}s") from None
            raise LinkError("connection", str(exc)) from None
        except OSError as exc:
            raise LinkError("connection", str(exc)) from None
        if rr.isError():
            code = getattr(rr, "exception_code", 0)
            if code:
                raise DeviceException(code)
            raise LinkError("protocol", f"error reply {rr}")
        if req.function in (1, 2):
            return np.asarray(rr.bits[: req.count], dtype=np.uint8)
        return np.asarray(rr.registers, dtype=np.uint16)
