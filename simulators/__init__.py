"""Software PLCs serving a deterministic, seeded plant, for tests, CI and the demo.

See simulators/README.md. `simulators.plant.value_at` is the contract: it returns exactly what a
simulator serves at a given instant, so tests can assert on values without a recorded fixture.
"""
