"""Peers for `scripts/bench peers`: other consumers of scenario (a)'s readings, measured on the
same broker, database server and simulator workload as the fleetflow engine.

- `install`: installs Node-RED 4 with `pg`, and a venv with paho-mqtt and psycopg2, from the
  package registries into the git-ignored `bench-results/peers/` (idempotent).
- `nodered`: the generated Node-RED settings and flows (naive and tuned).
- `paho_worker`: a small paho-mqtt worker with the original GXP worker's design.
- `runner`: runs every consumer once per round and prints the comparison table.
"""
