#!/usr/bin/env python3
"""A paho-mqtt worker with the original GXP worker's design (github Kairoma/GPX,
`gxp-mqtt-worker/app.py`), reduced to fleetflow's v1 readings, for `scripts/bench peers`.

The design kept from the GXP worker:
- paho-mqtt 2.1.0 (the version it pinned), callback API version 2, MQTT 3.1.1, a clean session,
  a client id made from the start time, keepalive 60 s, a QoS 1 subscription to `+/data` made in
  `on_connect`, and the network loop in paho's background thread (`loop_start`), the main thread
  only sleeping;
- `on_message` handles one message at a time in that thread: it parses the JSON and writes one
  row with one `INSERT` (the GXP worker made one Supabase REST insert per message, each its own
  transaction; here one autocommit psycopg2 statement), and logs and swallows any error;
- the acknowledgement is paho's default (no `manual_ack`): paho sends the PUBACK when
  `on_message` returns, whatever happened inside it. A reading whose insert failed is acked and
  gone; nothing is retried. The GXP worker also looked its device up (`ensure_device`, one more
  round trip per message); this worker does not, so it is, if anything, faster than the original.

Usage: paho_worker.py --url mqtt://HOST:PORT --prefix PREFIX --pg POSTGRES_URL [--client-id ID]
(POSTGRES_URL may also come from FLEETFLOW_PEER_PG_URL, to keep it out of the process list).
Prints "subscribed" on stdout once the SUBACK is in. Stops on SIGTERM or SIGINT.
"""
import argparse
import json
import logging
import os
import signal
import sys
import time

import paho.mqtt.client as mqtt
import psycopg2

log = logging.getLogger("paho-worker")

INSERT = ("INSERT INTO sensor_readings (device_id, seq, temperature_c, humidity_pct, pressure_hpa, gas_kohm, measured_at) "
          "VALUES (%s, %s, %s, %s, %s, %s, COALESCE(%s::timestamptz, now())) ON CONFLICT DO NOTHING")

running = True


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True, help="broker, mqtt://host:port")
    p.add_argument("--prefix", required=True, help="topic prefix: subscribes to PREFIX/+/data")
    p.add_argument("--pg", default=os.environ.get("FLEETFLOW_PEER_PG_URL"), help="Postgres URL")
    p.add_argument("--client-id", default=f"gxp-worker-{int(time.time())}")
    a = p.parse_args()
    if not a.pg:
        p.error("--pg or FLEETFLOW_PEER_PG_URL is required")
    return a


class Worker:
    """The MQTT callbacks and the database connection they write through."""

    def __init__(self, prefix, pg_url):
        self.topic = f"{prefix}/+/data"
        self.pg_url = pg_url
        self.connect_db()
        self.stored = 0
        self.errors = 0

    def connect_db(self):
        self.db = psycopg2.connect(self.pg_url)
        self.db.autocommit = True
        self.cur = self.db.cursor()

    def on_connect(self, client, userdata, flags, reason_code, properties):
        """Subscribes on every (re)connection, like the GXP worker."""
        if reason_code.is_failure:
            log.error("connection refused: %s", reason_code)
            return
        client.subscribe(self.topic, qos=1)

    def on_subscribe(self, client, userdata, mid, reason_codes, properties):
        print("subscribed", flush=True)

    def on_disconnect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.warning("disconnected (%s); paho reconnects", reason_code)

    def on_message(self, client, userdata, msg):
        """One message, one INSERT; errors are logged and the message is acked anyway."""
        try:
            device_id = msg.topic.split("/")[-2]
            r = json.loads(msg.payload)
            if r.get("type") != "reading":
                return
            self.cur.execute(INSERT, (device_id, r["seq"], r.get("temperature_c"), r.get("humidity_pct"),
                                      r.get("pressure_hpa"), r.get("gas_kohm"), r.get("ts")))
            self.stored += 1
        except Exception as e:  # the GXP worker's on_message catches everything, too
            self.errors += 1
            if self.errors <= 10:
                log.error("handling %s: %s", msg.topic, e)
            if self.db.closed:
                try:
                    self.connect_db()
                except psycopg2.Error as e2:
                    log.error("reconnecting to Postgres: %s", e2)


def stop(signum, frame):
    global running
    running = False


def main():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] %(name)s: %(message)s")
    a = parse_args()
    host, port = a.url.split("://", 1)[1].rsplit(":", 1)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    w = Worker(a.prefix, a.pg)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=a.client_id)
    client.on_connect = w.on_connect
    client.on_subscribe = w.on_subscribe
    client.on_disconnect = w.on_disconnect
    client.on_message = w.on_message
    client.connect(host, int(port), keepalive=60)
    client.loop_start()
    try:
        while running:
            time.sleep(0.5)
    finally:
        client.loop_stop()
        client.disconnect()
        log.info("stored %d, errors %d", w.stored, w.errors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
