"""`edge-agent demo`: the whole system in one process on loopback, for the first minute with the product."""
