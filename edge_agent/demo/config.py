"""The demo's built-in config: the classic plant and the tank over Modbus, the kiln over OPC UA."""

from __future__ import annotations

DEMO_TOML = """
[agent]
id = "demo"
state_dir = "{state_dir}"
log_level = "warning"

[uplink]
url = "{broker_url}"
protocol = "{protocol}"
keepalive = "5s"
reconnect_min = "200ms"
reconnect_max = "1s"

[batch]
max_interval = "1s"

[metrics]
enabled = false

[filters.supply_temp]
kind = "limits"
lo = 60.0
hi = 80.0

[filters.boiler_pressure]
kind = "limits"
lo = 1.7
hi = 3.1

[filters.motor_overload]
kind = "limits"
hi = 2600

# Tuned on the simulators' injected anomalies with `edge-agent replay` (see docs/filters.md).
[filters.level_spikes]
kind = "hampel"
window = 31
n_sigmas = 6.0
min_sigma = 0.05

[filters.level_stuck]
kind = "flatline"
samples = 30

[filters.level_shift]
kind = "ewma_zscore"
alpha = 0.02
threshold = 6.0
warmup = 50
min_sigma = 0.02

[filters.kiln_spikes]
kind = "hampel"
window = 31
n_sigmas = 6.0
min_sigma = 1.0

[filters.kiln_shift]
kind = "ewma_zscore"
alpha = 0.02
threshold = 6.0
warmup = 50
min_sigma = 0.5

[[devices]]
name = "boiler"
protocol = "modbus"
endpoint = "tcp://127.0.0.1:{modbus_port}"
unit = 1
poll_interval = "500ms"
[[devices.tags]]
name = "temp_supply"
address = "hr:0"
type = "float32"
filters = ["supply_temp"]
[[devices.tags]]
name = "temp_return"
address = "hr:2"
type = "float32"
[[devices.tags]]
name = "pressure"
address = "hr:4"
type = "float32"
filters = ["boiler_pressure"]
[[devices.tags]]
name = "burner_modulation"
address = "hr:6"
type = "int16"

[[devices]]
name = "press"
protocol = "modbus"
endpoint = "tcp://127.0.0.1:{modbus_port}"
unit = 2
poll_interval = "100ms"
[[devices.tags]]
name = "motor_current_raw"
address = "ir:0"
type = "uint16"
filters = ["motor_overload"]
[[devices.tags]]
name = "oil_temp_x10"
address = "ir:1"
type = "int16"
[[devices.tags]]
name = "stroke_count"
address = "ir:2"
type = "uint32"
[[devices.tags]]
name = "running"
address = "coil:0"
type = "bool"

[[devices]]
name = "mixer"
protocol = "modbus"
endpoint = "tcp://127.0.0.1:{modbus_port}"
unit = 3
poll_interval = "250ms"
[[devices.tags]]
name = "flow_setpoint"
address = "hr:0"
type = "float32"
[[devices.tags]]
name = "flow_actual"
address = "hr:2"
type = "float32"
[[devices.tags]]
name = "speed_rpm"
address = "hr:6"
type = "uint16"

[[devices]]
name = "tank"
protocol = "modbus"
endpoint = "tcp://127.0.0.1:{modbus_port}"
unit = 4
poll_interval = "100ms"
[[devices.tags]]
name = "level"
address = "hr:0"
type = "float32"
filters = ["level_spikes", "level_stuck", "level_shift"]
[[devices.tags]]
name = "inlet_temp"
address = "hr:2"
type = "float32"
[[devices.tags]]
name = "pump_on"
address = "coil:0"
type = "bool"

[[devices]]
name = "kiln"
protocol = "opcua"
endpoint = "opc.tcp://127.0.0.1:{opcua_port}/edge-agent/plant"
mode = "subscribe"
sampling_interval = "100ms"
publishing_interval = "500ms"
namespaces = {{ plant = "urn:edge-agent:plant-sim" }}
[[devices.tags]]
name = "zone_temp"
node = "ns=plant;s=kiln.zone_temp"
type = "float32"
filters = ["kiln_spikes", "kiln_shift"]
[[devices.tags]]
name = "fan_speed"
node = "ns=plant;s=kiln.fan_speed"
type = "float32"
"""
