"""MicroPython side of tests/test_firmware_mqtt.py: a firmware MQTT client against a real broker.

usage: micropython fw_mqtt_client.py PORT CLIENT_ID [CA_FILE]   (a CA file: TLS)
Connects with a last will, subscribes to t/in/#, echoes every message to t/out (QoS 1) and
prints one line per event, then stays up until killed (or until it receives "quit").
"""

import asyncio
import sys

import mqtt

PORT = int(sys.argv[1])
CID = sys.argv[2]
done = asyncio.Event()
client = None
queue = []


def on_message(topic, payload, retained):
    print("got %s %s %d" % (topic, payload.decode(), 1 if retained else 0))
    queue.append((topic, payload))


async def main():
    global client
    client = mqtt.MQTTClient(
        CID,
        "127.0.0.1",
        PORT,
        keepalive=5,
        will=("t/status/" + CID, b"offline", 1, True),
        on_message=on_message,
        ssl=mqtt.tls_context(sys.argv[3]) if len(sys.argv) > 3 else None,
        server_hostname="localhost",
    )
    runner = asyncio.create_task(client.run())
    await client.wait_connected()
    await client.publish("t/status/" + CID, b"online", qos=1, retain=True)
    await client.subscribe("t/in/#", 1)
    print("ready")
    while True:
        while queue:
            _topic, payload = queue.pop(0)
            if payload == b"quit":
                await client.close()
                print("drops %r" % sorted(client.drops.items()))
                runner.cancel()
                return
            ok = await client.publish("t/out", b"echo:" + payload, qos=1)
            print("echoed %s %d" % (payload.decode(), 1 if ok else 0))
        await asyncio.sleep(0.02)


asyncio.run(main())
