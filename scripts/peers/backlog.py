"""`scripts/bench cluster-1` and `cluster-3`: the engine on NATS JetStream against the engine on
Mosquitto, by how fast each drains the same backlog.

The simulator speaks MQTT v5 and NATS's MQTT listener only 3.1.1, so the workload is published by
`backlog_publisher.py` (paho-mqtt, MQTT 3.1.1, QoS 1) while no engine runs, and the figure is
the engine's drain rate: stored rows over the span of their commits (`created_at`), as for every
scenario. Each path is primed first (the engine starts once and stops: on Mosquitto its persistent
session holds the subscriptions, on NATS its partition consumers exist, so the backlog is kept):

- `mosquitto`: the single-node path (`[mqtt]` on Mosquitto);
- `cluster-1`: one instance in cluster mode on the 3-node NATS cluster (`scripts/services up
  --cluster`);
- `cluster-3`: three instances; on 2 cores they share the CPU with NATS and PostgreSQL.
- `cluster-1-r1`: one instance on one standalone NATS server (`scripts/services nats-single`:
  stream and consumers R1, the 3-node cluster stopped), like for like with the one Mosquitto
  server of the `mosquitto` path; no replication, so it does not survive a node's loss.

FLEETFLOW_BENCH_BACKLOG (default 200,000 readings from 1,000 devices).
"""
import os
import subprocess
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
N = int(os.environ.get("FLEETFLOW_BENCH_BACKLOG", "200000"))
DEVICES = 1000
R = "SELECT count(*) FROM sensor_readings WHERE seq IS NOT NULL"


def _ready(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1)
            return
        except Exception:
            time.sleep(0.2)
    raise SystemExit(f"the engine on :{port} did not become ready")


def _start(ctx, env_extra, port, log):
    env = dict(os.environ, FLEETFLOW_HTTP__BIND=f"127.0.0.1:{port}", FLEETFLOW_LOG__LEVEL="warn", **env_extra)
    p = subprocess.Popen([f"{ctx.BIN}/fleetflow"], env=env, stdout=log, stderr=log)
    try:
        _ready(port)
    except SystemExit:
        p.kill()
        raise
    return p


def _publish(python, port, prefix, n):
    per_device = n // DEVICES
    subprocess.run([python, os.path.join(HERE, "backlog_publisher.py"), str(port), prefix, str(DEVICES), str(per_device)],
                   check=True)
    return per_device * DEVICES


def run(ctx, python, name, instances, nats=None):
    """One path: prime, stop, publish the backlog, start `instances` engines, time the drain.
    `nats`: the NATS servers' client and MQTT URLs and the replicas (None for Mosquitto)."""
    db = f"fleetflow_bench_{name.replace('-', '_')}"
    ctx.psql(ctx.ADMIN, f"DROP DATABASE IF EXISTS {db}")
    ctx.psql(ctx.ADMIN, f"CREATE DATABASE {db}")
    url = ctx.ADMIN.rsplit("/", 1)[0] + "/" + db
    prefix = f"bl{name.replace('-', '')}{int(time.time())}"
    base = {"FLEETFLOW_POSTGRES__URL": url, "FLEETFLOW_MQTT__TOPIC_PREFIX": prefix,
            "FLEETFLOW_OBJECTS__URL": f"file://{ctx.ROOT}/data/bench-objects/{name}"}
    if name == "mosquitto":
        mqtt_port = int(ctx.MQTT.rsplit(":", 1)[1])
        envs = [dict(base, FLEETFLOW_MQTT__CLIENT_ID=f"eng-{prefix}")]
    else:
        mqtt_port = int(nats["mqtt_urls"].split(",")[0].rsplit(":", 1)[1])
        envs = [dict(base, FLEETFLOW_CLUSTER__ENABLED="true", FLEETFLOW_CLUSTER__NATS_URLS=nats["urls"],
                     FLEETFLOW_CLUSTER__REPLICAS=str(nats["replicas"]),
                     FLEETFLOW_CLUSTER__INSTANCE_ID=f"{prefix}-{i}") for i in range(instances)]
    log = open(f"bench-results/{name}-engine.log", "w")
    ports = [19464 + i for i in range(len(envs))]
    # Prime: the session (Mosquitto) or the partition consumers (NATS) outlive the engine.
    p = _start(ctx, envs[0], ports[0], log)
    time.sleep(3 if name != "mosquitto" else 0.5)
    p.terminate()
    p.wait(timeout=30)
    t0 = time.time()
    sent = _publish(python, mqtt_port, prefix, N)
    ctx.log(f"  {name}: {sent} readings published in {time.time() - t0:.1f} s with no engine running")
    procs = [_start(ctx, e, port, log) for e, port in zip(envs, ports)]
    base_cpu = [ctx.proc_stats(q.pid)["cpu_s"] for q in procs]
    deadline = time.time() + 600
    n = 0
    last, last_t = -1, time.time()
    while time.time() < deadline:
        n = int(ctx.psql(url, R))
        if n >= sent:
            break
        if n != last:
            last, last_t = n, time.time()
        elif time.time() - last_t > 60:
            ctx.log(f"  {name}: no progress for 60 s at {n} of {sent} readings")
            break
        time.sleep(0.5)
    cpu = sum(ctx.proc_stats(q.pid)["cpu_s"] - b for q, b in zip(procs, base_cpu))
    for i, port in enumerate(ports[:len(procs)]):
        # Each engine's metrics at the end of the drain, to read batch sizes and acks from.
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r, \
                    open(f"bench-results/{name}-metrics-{i}.txt", "wb") as out:
                out.write(r.read())
        except OSError as e:
            ctx.log(f"  {name}: no metrics from the engine on :{port} ({e})")
    for q in procs:
        q.terminate()
    for q in procs:
        q.wait(timeout=60)
    span = float(ctx.psql(url, "SELECT COALESCE(EXTRACT(EPOCH FROM max(created_at) - min(created_at)), 0) FROM sensor_readings WHERE seq IS NOT NULL") or 0)
    distinct = int(ctx.psql(url, "SELECT count(DISTINCT (device_id, seq)) FROM sensor_readings WHERE seq IS NOT NULL"))
    profile = ctx.psql(url, "SELECT string_agg(c::text, ' ' ORDER BY s) FROM (SELECT date_trunc('second', created_at) s, "
                            "count(*) c FROM sensor_readings WHERE seq IS NOT NULL GROUP BY 1) x")
    ctx.log(f"  {name}: readings committed per second of the drain: {profile}")
    ctx.psql(ctx.ADMIN, f"DROP DATABASE IF EXISTS {db}")
    return {"name": name, "instances": len(envs), "sent": sent, "stored": n, "distinct": distinct,
            "span_s": span, "rate": n / span if span > 0 else 0, "cpu_s": cpu}


def print_table(rows):
    base = next((r["rate"] for r in rows if r["name"] == "mosquitto"), 0)
    print("| path | instances | readings stored / sent | drain rate (durable readings/s) | engine CPU s | ratio to the Mosquitto path |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['rate'] / base:.2f}" if base else "–"
        print(f"| {r['name']} | {r['instances']} | {r['stored']:,} / {r['sent']:,} (distinct {r['distinct']:,}) | {r['rate']:,.0f} | {r['cpu_s']:.1f} | {ratio} |")
    print()
