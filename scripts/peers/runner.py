"""`scripts/bench peers`: fleetflow against other consumers of scenario (a)'s readings.

Each round runs, one after the other, on the same broker, the same PostgreSQL server and the
same simulator workload (scenario (a): 1,000 devices on 4 connections at max rate, readings
only):

1. the null subscriber (`fleetflow-null-sub`: acks and discards; the broker's drain rate);
2. the fleetflow engine (`engine_run` of scripts/bench, exactly as scenario (a));
3. Node-RED 4, naive flow (one INSERT per message; `nodered.py`);
4. Node-RED 4, tuned flow (join 500 / 200 ms, one multi-row INSERT per group);
5. the paho-mqtt worker with the GXP worker's design (`paho_worker.py`).

Every consumer that stores writes `sensor_readings` in a fresh database of its own whose schema
`fleetflow migrate` made, and is measured the way scripts/bench measures the engine: stored rows
(`seq IS NOT NULL`) over the span of their `created_at` (commit time), its CPU seconds (user +
system, from /proc, after its start-up) and its peak RSS (`VmHWM`). Lost = readings the
simulator published (and the broker acknowledged) minus the rows stored.

The peers are slower than the engine: after the simulator is done each is given
FLEETFLOW_BENCH_PEERS_DEADLINE_S (default 300) seconds, and stopped earlier when its row count
has not moved for FLEETFLOW_BENCH_PEERS_STALL_S (default 20). One still behind at the deadline
is killed there and measured over what it stored by then (its rate is still a rate, so the ratio
stands); its "lost" is then unknown and the table says how many were not stored yet.

FLEETFLOW_BENCH_PEERS_READINGS_PER_DEVICE (default 1000, as in scenario (a): 1,000,000 readings)
makes every consumer's workload smaller, for a quick check; the devices and connections stay.
"""
import json
import os
import signal
import subprocess
import sys
import time

from . import install, nodered

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PEERS_DIR = os.path.abspath(os.environ.get("FLEETFLOW_BENCH_PEERS_DIR") or os.path.join(ROOT, "bench-results", "peers"))
NODE_RED_PORT = 18880

DEADLINE_S = float(os.environ.get("FLEETFLOW_BENCH_PEERS_DEADLINE_S", "300"))
STALL_S = float(os.environ.get("FLEETFLOW_BENCH_PEERS_STALL_S", "20"))
READINGS_PER_DEVICE = int(os.environ.get("FLEETFLOW_BENCH_PEERS_READINGS_PER_DEVICE", "1000"))

COUNT = "SELECT count(*) FROM sensor_readings WHERE seq IS NOT NULL"
SPAN = ("SELECT COALESCE(EXTRACT(EPOCH FROM max(created_at) - min(created_at)), 0) "
        "FROM sensor_readings WHERE seq IS NOT NULL")

# (key, table label, how it acknowledges)
CONSUMERS = [
    ("null", "null subscriber (fleetflow-null-sub)", "acks on receipt, stores nothing"),
    ("fleetflow", "fleetflow engine", "acks after the rows' commit (durable)"),
    ("node-red-naive", "Node-RED {v} naive (INSERT per message)", "MQTT.js acks on receipt, before the flow runs: not durable"),
    ("node-red-tuned", "Node-RED {v} tuned (join 500 / 200 ms, multi-row INSERT)",
     "MQTT.js acks on receipt, before the flow runs: not durable"),
    ("paho", "paho-mqtt worker, GXP design (INSERT per message)",
     "paho acks when on_message returns, also after a failed INSERT: not durable on error"),
]


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def scenario_args(a_args):
    """Scenario (a)'s simulator arguments with --readings-per-device set to the peers' count."""
    args = list(a_args)
    args[args.index("--readings-per-device") + 1] = str(READINGS_PER_DEVICE)
    return args


def run(b, repeat):
    """All rounds; returns the JSON-able result. `b` carries scripts/bench's helpers and settings:
    mqtt, admin, bin, scen_a (scenario (a)'s tuple), null_floor, psql, sim, null_run, engine_run,
    proc_stats."""
    sw = install.all_peers(PEERS_DIR)
    args = scenario_args(b.scen_a[1])
    devices = int(args[args.index("--devices") + 1])
    n = devices * READINGS_PER_DEVICE
    desc = f"scenario (a)'s workload: {devices:,} devices, {n:,} readings (max rate)"
    rounds = []
    for i in range(repeat):
        log(f"scenario peers ({i + 1}/{repeat}): {desc}")
        r = {}
        log("  null subscriber")
        r["null"] = null_result(b.null_run("peers", args, n), n)
        if r["null"]["rate"] < b.null_floor:
            raise SystemExit(f"the null subscriber drained {r['null']['rate']:.0f} msg/s, below the floor of "
                             f"{b.null_floor:.0f}: the machine is too busy to measure (FLEETFLOW_BENCH_NULL_FLOOR)")
        log("  fleetflow engine")
        r["fleetflow"] = engine_result(b.engine_run("peers", args, {}, COUNT, n), n)
        for variant in nodered.VARIANTS:
            log(f"  Node-RED {sw['node_red_version']} {variant}")
            r[f"node-red-{variant}"] = peer_run(b, f"node-red-{variant}", args, n, sw)
        log("  paho-mqtt worker")
        r["paho"] = peer_run(b, "paho", args, n, sw)
        rounds.append(r)
    return {"description": desc, "readings": n, "readings_per_device": READINGS_PER_DEVICE, "repeat": repeat,
            "deadline_s": DEADLINE_S, "stall_s": STALL_S, "node_red_version": sw["node_red_version"],
            "rounds": rounds}


def null_result(r, n):
    """The null subscriber's record: messages received per second (nothing is stored)."""
    sent = r["sim"]["readings_sent"]
    return {"rate": r.get("messages_per_sec", 0), "stored": r.get("messages", 0), "sent": sent,
            "lost": sent - r.get("messages", 0), "status": "complete" if r.get("messages", 0) >= n else "idle",
            "cpu_s": r.get("cpu_s"), "peak_rss": r.get("peak_rss"), "raw": r}


def engine_result(e, n):
    """The engine's record, from engine_run's measurement."""
    sent = e["sim"]["readings_sent"]
    rate = e["readings"] / e["readings_span_s"] if e["readings_span_s"] > 0 else 0
    return {"rate": rate, "stored": e["readings"], "sent": sent, "status": "complete" if e["readings"] >= n else "deadline",
            "lost": sent - e["readings"] if e["readings"] >= n else None,
            "cpu_s": e["cpu_s"], "peak_rss": e["peak_rss"], "span_s": e["readings_span_s"], "raw": e}


def fresh_database(b, name):
    """Drops and creates a database, makes fleetflow's schema in it with `fleetflow migrate`,
    and returns its URL."""
    b.psql(b.admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    b.psql(b.admin, f"CREATE DATABASE {name}")
    url = b.admin.rsplit("/", 1)[0] + "/" + name
    env = dict(os.environ, FLEETFLOW_POSTGRES__URL=url, FLEETFLOW_LOG__LEVEL="warn")
    r = subprocess.run([os.path.join(b.bin, "fleetflow"), "migrate"], env=env, text=True, capture_output=True)
    if r.returncode != 0:
        raise SystemExit(f"fleetflow migrate failed: {r.stderr[-2000:]}")
    return url


def start_peer(kind, prefix, pg_url, mqtt_url, sw, logf):
    """Starts one peer; returns (its Popen, the log line it writes on each connection to the
    broker: for the paho worker on each SUBACK, for Node-RED on each connection)."""
    if kind == "paho":
        cmd = [sw["python"], os.path.join(HERE, "paho_worker.py"), "--url", mqtt_url, "--prefix", prefix,
               "--client-id", f"gxp-worker-{prefix}"]
        env = dict(os.environ, FLEETFLOW_PEER_PG_URL=pg_url, PYTHONUNBUFFERED="1")
        return subprocess.Popen(cmd, env=env, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL), "subscribed"
    variant = kind.rsplit("-", 1)[1]
    user_dir = os.path.abspath(sw["node_red_dir"])
    flow_file = f"flows-{variant}.json"
    settings = os.path.join(user_dir, f"settings-{variant}.js")
    with open(settings, "w") as f:
        f.write(nodered.settings_js(user_dir, flow_file, NODE_RED_PORT))
    with open(os.path.join(user_dir, flow_file), "w") as f:
        json.dump(nodered.flows(variant, mqtt_url, prefix, pg_url, f"nr-{prefix}"), f)
    red = os.path.join(user_dir, "node_modules", "node-red", "red.js")
    cmd = ["node", red, "--userDir", user_dir, "--settings", settings]
    return subprocess.Popen(cmd, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL), "Connected to broker"


def stats_or(b, proc, last):
    """The process's /proc figures, or `last` once it has exited."""
    try:
        return b.proc_stats(proc.pid) if proc.poll() is None else last
    except (OSError, KeyError, IndexError):
        return last


def wait_for_line(proc, path, text, timeout):
    """Waits until the log at `path` has `text`; fails when the process exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(path, errors="replace") as f:
            if text in f.read():
                return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the peer did not get ready ({text!r} not in {path})")


def stop(proc):
    """SIGTERM, then SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def peer_run(b, kind, args, n, sw):
    """One peer against the workload: fresh database, start, simulator, wait, measure, stop.
    The peer is stopped whatever happens (a failed query, Ctrl-C)."""
    db = f"fleetflow_bench_peer_{kind.replace('-', '_')}"
    url = fresh_database(b, db)
    prefix = f"bp{kind.replace('-', '')}{int(time.time())}"
    log_path = os.path.join(ROOT, "bench-results", f"peers-{kind}.log")
    with open(log_path, "w") as logf:
        proc, ready = start_peer(kind, prefix, url, b.mqtt, sw, logf)
    try:
        wait_for_line(proc, log_path, ready, 90)
        time.sleep(1.0)  # the SUBACK after the connection (Node-RED logs only the connection)
        base = b.proc_stats(proc.pid)
        s = b.sim(prefix, args, os.path.join("bench-results", f"peers-{kind}-sim.json"))
        sent = s["readings_sent"]
        stored, status, last, waited = wait_stored(b, proc, url, sent, base)
        with open(log_path, errors="replace") as f:
            reconnects = f.read().count(ready) - 1
        if status == "deadline":
            proc.kill()  # nothing it stores after the deadline counts (and what it held is gone)
            proc.wait()
    finally:
        stop(proc)
    stored = int(b.psql(url, COUNT))
    span = float(b.psql(url, SPAN) or 0)
    b.psql(b.admin, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    r = {"rate": stored / span if span > 0 else 0, "stored": stored, "sent": sent, "status": status,
         "lost": None if status == "deadline" else sent - stored, "reconnects": reconnects, "span_s": span,
         "waited_s": waited, "cpu_s": last["cpu_s"] - base["cpu_s"], "peak_rss": last["hwm"], "sim": s}
    log(f"    {stored:,} of {sent:,} stored ({status}), {r['rate']:.0f} rows/s, {reconnects} reconnection(s)")
    return r


def wait_stored(b, proc, url, sent, base):
    """Polls the row count once a second until every reading is stored, the peer exits, the count
    has not moved for STALL_S, or DEADLINE_S have passed. Returns (stored, status, the peer's last
    /proc figures, seconds waited)."""
    stored, last = 0, base
    t0 = last_change = time.time()
    while True:
        last = stats_or(b, proc, last)
        now = int(b.psql(url, COUNT))
        t = time.time()
        if now != stored:
            stored, last_change = now, t
        if stored >= sent:
            return stored, "complete", last, t - t0
        if proc.poll() is not None:
            return stored, f"exited ({proc.returncode})", last, t - t0
        if t - last_change >= STALL_S:
            return stored, "stalled", last, t - t0
        if t - t0 >= DEADLINE_S:
            return stored, "deadline", last, t - t0
        time.sleep(1.0)


def median_round(rounds, key):
    """The round whose rate for `key` is the median one."""
    order = sorted(rounds, key=lambda r: r[key]["rate"])
    return order[len(order) // 2][key]


def spread(xs):
    """The median of the ratios, with the range when there are more than one."""
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return "–"
    med = xs[len(xs) // 2]
    return f"{med:.2f}" if len(xs) == 1 else f"{med:.2f} ({xs[0]:.2f}–{xs[-1]:.2f}, {len(xs)} runs)"


def print_table(res):
    """The comparison table (markdown) and its notes."""
    v = res["node_red_version"]
    rounds = res["rounds"]
    print(f"\nscripts/bench peers — {res['description']}, {res['repeat']} round(s), "
          f"median round per consumer\n")
    print("| consumer | durable rows/s | lost | CPU s | peak RSS MiB | fleetflow ÷ this peer |")
    print("|---|---|---|---|---|---|")
    for key, label, _ in CONSUMERS:
        m = median_round(rounds, key)
        ratios = [r["fleetflow"]["rate"] / r[key]["rate"] if r[key]["rate"] > 0 else None for r in rounds]
        rate = f"{m['rate']:,.0f}"
        if key == "null":
            rate = f"– ({m['rate']:,.0f} msg/s received, nothing stored)"
        if m["lost"] is not None:
            lost = f"{m['lost']:,}"
        else:
            lost = f"? ({m['sent'] - m['stored']:,} not stored at the {res['deadline_s']:.0f} s deadline)"
        if m["status"].startswith("exited"):
            lost += f", peer {m['status']}"
        if m.get("reconnects"):
            lost += f"; reconnected {m['reconnects']}× during the run"
        cpu = f"{m['cpu_s']:.1f}" if m.get("cpu_s") is not None else "–"
        rss = f"{m['peak_rss'] / 2**20:,.0f}" if m.get("peak_rss") else "–"
        ratio = "1" if key == "fleetflow" else spread(ratios)
        print(f"| {label.format(v=v)} | {rate} | {lost} | {cpu} | {rss} | {ratio} |")
    print()
    print("Notes:")
    print(f"- Every consumer got the same workload ({res['readings']:,} readings published, acknowledged by the broker) "
          "from the same simulator, broker and PostgreSQL server, one after the other; each storing consumer wrote "
          "`sensor_readings` in a fresh database of its own made by `fleetflow migrate`.")
    print("- durable rows/s: rows with a `seq` over the span of their `created_at` (first to last commit), as in "
          "scenario (a); the ratio column compares rates, not counts, per round (median and range across rounds).")
    print(f"- The peers had {res['deadline_s']:.0f} s after the simulator finished "
          f"(FLEETFLOW_BENCH_PEERS_DEADLINE_S) and were stopped {res['stall_s']:.0f} s after their count stopped "
          "growing; one stopped by the deadline is measured over what it had stored by then, and its loss is unknown.")
    print("- Lost: published minus stored. CPU s: the consumer's own user+system time after start-up (PostgreSQL's "
          "and the broker's work is not counted for anyone); peak RSS: VmHWM (wait4's maxrss for the null subscriber).")
    print("- Node-RED and the paho worker connect with a clean session, as the GXP worker did: when one is "
          "disconnected (a keepalive timeout while it works through a backlog, say), the broker drops every reading "
          "it still held for it, and the reconnected client only gets new ones.")
    for key, label, acks in CONSUMERS:
        print(f"- {label.format(v=v)}: {acks}.")
    print()
