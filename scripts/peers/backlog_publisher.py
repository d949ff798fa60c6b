"""Publishes readings at QoS 1 over MQTT 3.1.1 and waits for every PUBACK.

    backlog_publisher.py PORT PREFIX DEVICES PER_DEVICE

Device d's readings go to {PREFIX}/BL{d:08X}/data with seq 1..PER_DEVICE, the payload the
simulator sends. Used by backlog.py (NATS's MQTT listener speaks 3.1.1 only).
"""
import sys
import threading

import paho.mqtt.client as mqtt

WINDOW = 2000


def main():
    port, prefix, devices, per_device = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    total = devices * per_device
    acked = [0]
    cond = threading.Condition()

    def on_publish(client, userdata, mid, reason_code, properties):
        with cond:
            acked[0] += 1
            cond.notify_all()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"backlog-{prefix}", protocol=mqtt.MQTTv311,
                    clean_session=True)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port, keepalive=60)
    c.loop_start()
    sent = 0
    for seq in range(1, per_device + 1):
        for d in range(devices):
            # paho's queue slows down as it grows: keep at most WINDOW unacknowledged.
            with cond:
                if not cond.wait_for(lambda: sent - acked[0] < WINDOW, timeout=60):
                    sys.exit(f"no PUBACK for 60 s ({acked[0]} of {sent} acknowledged)")
            body = f'{{"type":"reading","seq":{seq},"temperature_c":21.5,"humidity_pct":40.0,"pressure_hpa":1000.0,"gas_kohm":10.0}}'
            c.publish(f"{prefix}/BL{d:08X}/data", body, qos=1)
            sent += 1
    with cond:
        if not cond.wait_for(lambda: acked[0] >= total, timeout=120):
            sys.exit(f"only {acked[0]} of {total} readings acknowledged")
    c.loop_stop()
    c.disconnect()


if __name__ == "__main__":
    main()
