"""A small MQTT 3.1.1 client for the board: last will, publish QoS 0/1, subscribe, keepalive,
reconnect.

Two layers, the way h11 splits protocol from I/O:

- packet functions (``encode_*``, ``split_packet``, ``decode_publish`` ...) are pure: bytes in,
  values out, and a malformed packet raises ``MqttError`` and nothing else;
- ``MQTTClient`` owns one asyncio stream, a reader task and a keepalive task, and reconnects
  with backoff.

Runs on MicroPython and CPython alike. Bounded everywhere: the largest packet accepted
(``max_packet``), the QoS 1 messages waiting for PUBACK (``max_inflight``), the subscriptions.
"""

import struct

try:
    import asyncio
except ImportError:  # very old MicroPython
    import uasyncio as asyncio  # type: ignore[no-redef]

try:
    from time import ticks_diff, ticks_ms  # type: ignore[attr-defined]
except ImportError:  # CPython
    import time as _time

    def ticks_ms():
        return int(_time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b


# Packet types (high nibble of the first byte).
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBSCRIBE = 8
SUBACK = 9
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

_PINGREQ = b"\xc0\x00"
_DISCONNECT = b"\xe0\x00"

# A remaining-length field has at most 4 bytes (MQTT 3.1.1, 2.2.3).
_MAX_LEN_BYTES = 4


class MqttError(Exception):
    """The peer sent something this client cannot accept (malformed, truncated, refused)."""


# ---------------------------------------------------------------- encoding


def _str(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack("!H", len(s)) + s


def _fixed(first, body_len):
    out = bytearray(5)
    out[0] = first
    i = 1
    n = body_len
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out[i] = b | 0x80
            i += 1
        else:
            out[i] = b
            i += 1
            return bytes(out[:i])


def encode_connect(client_id, keepalive=30, clean=True, will=None, user=None, password=None):
    """CONNECT. ``will`` is (topic, message, qos, retain) or None."""
    flags = 0x02 if clean else 0
    payload = _str(client_id)
    if will:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _str(topic) + _str(message)
    if user is not None:
        flags |= 0x80
        payload += _str(user)
        if password is not None:
            flags |= 0x40
            payload += _str(password)
    body = b"\x00\x04MQTT\x04" + bytes((flags,)) + struct.pack("!H", keepalive) + payload
    return _fixed(0x10, len(body)) + body


def encode_publish(topic, payload, qos=0, retain=False, pid=0, dup=False):
    if isinstance(payload, str):
        payload = payload.encode()
    first = 0x30 | (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0)
    head = _str(topic)
    if qos:
        head += struct.pack("!H", pid)
    return _fixed(first, len(head) + len(payload)) + head + payload


def encode_puback(pid):
    return b"\x40\x02" + struct.pack("!H", pid)


def encode_subscribe(pid, topic, qos=0):
    body = struct.pack("!H", pid) + _str(topic) + bytes((qos,))
    return _fixed(0x82, len(body)) + body


# ---------------------------------------------------------------- decoding


def split_packet(buf, end, max_packet):
    """Find one packet at the start of ``buf[:end]``.

    Returns (first_byte, body_start, body_end) or None when more bytes are needed. Raises
    MqttError for a length field that is malformed or larger than ``max_packet``: the stream
    cannot be resynchronised after that, so the caller drops the connection.
    """
    if end < 2:
        return None
    n = 0
    shift = 0
    i = 1
    while True:
        if i >= end:
            return None
        if i > _MAX_LEN_BYTES:
            raise MqttError("length")
        b = buf[i]
        n |= (b & 0x7F) << shift
        shift += 7
        i += 1
        if not b & 0x80:
            break
    if n > max_packet:
        raise MqttError("too_large")
    if end < i + n:
        return None
    return buf[0], i, i + n


def _read_str(body, pos):
    if pos + 2 > len(body):
        raise MqttError("truncated")
    n = (body[pos] << 8) | body[pos + 1]
    pos += 2
    if pos + n > len(body):
        raise MqttError("truncated")
    try:
        s = str(bytes(body[pos : pos + n]), "utf-8")
    except UnicodeError:
        raise MqttError("utf8")
    return s, pos + n


def decode_publish(first, body):
    """-> (topic, payload bytes, qos, retain, pid). ``body`` excludes the fixed header."""
    qos = (first >> 1) & 3
    if qos == 3:
        raise MqttError("qos")
    topic, pos = _read_str(body, 0)
    pid = 0
    if qos:
        if pos + 2 > len(body):
            raise MqttError("truncated")
        pid = (body[pos] << 8) | body[pos + 1]
        pos += 2
    return topic, bytes(body[pos:]), qos, bool(first & 1), pid


def decode_pid(body):
    """Packet id of PUBACK / SUBACK (first two bytes)."""
    if len(body) < 2:
        raise MqttError("truncated")
    return (body[0] << 8) | body[1]


# ---------------------------------------------------------------- the client

_BACKOFF_MIN_MS = 500
_BACKOFF_MAX_MS = 30000


class MQTTClient:
    """One connection to one broker, kept up by ``run()``.

    ``on_message(topic, payload, retained)`` is called for every accepted PUBLISH.
    Counters: ``drops`` (reason -> count, for packets refused), ``connects``, ``reconnects``.
    """

    def __init__(
        self,
        client_id,
        host,
        port=1883,
        keepalive=30,
        will=None,
        user=None,
        password=None,
        on_message=None,
        max_packet=8192,
        max_inflight=8,
        max_subscriptions=8,
        ack_timeout_ms=3000,
        on_connect=None,
        on_disconnect=None,
        reconnect_min_ms=_BACKOFF_MIN_MS,
        reconnect_max_ms=_BACKOFF_MAX_MS,
        ssl=None,
        server_hostname=None,
    ):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self.will = will
        self.user = user
        self.password = password
        self.on_message = on_message
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.reconnect_min_ms = reconnect_min_ms
        self.reconnect_max_ms = reconnect_max_ms
        self.ssl = ssl  # an SSLContext (see ``tls_context``) or None for plain TCP
        self.server_hostname = server_hostname
        self.max_packet = max_packet
        self.max_inflight = max_inflight
        self.max_subscriptions = max_subscriptions
        self.ack_timeout_ms = ack_timeout_ms
        self.drops = {}
        self.connects = 0
        self.reconnects = 0
        self.connected = False
        self._subs = []  # [topic, qos], replayed on reconnect (a list: order kept)
        self._inflight = {}  # pid -> asyncio.Event set by PUBACK
        self._pid = 0
        self._reader = None
        self._writer = None
        self._buf = bytearray(max_packet + 5)
        self._fill = 0
        self._last_rx = 0
        self._last_tx = 0
        self._closing = False
        self._up = asyncio.Event()

    # -- public API

    async def connect(self, timeout_ms=5000):
        """Open the TCP connection, send CONNECT and wait for CONNACK. Raises on failure."""
        self._close_stream()
        if self.ssl is not None:
            opening = asyncio.open_connection(
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.server_hostname or self.host,
            )
        else:
            opening = asyncio.open_connection(self.host, self.port)
        reader, writer = await _wait_for_ms(opening, timeout_ms)
        self._reader, self._writer = reader, writer
        self._fill = 0
        pkt = encode_connect(
            self.client_id, self.keepalive, True, self.will, self.user, self.password
        )
        await self._send(pkt)
        first, body = await self._wait_packet(timeout_ms)
        if first >> 4 != CONNACK or len(body) != 2:
            self._close_stream()
            raise MqttError("no_connack")
        if body[1] != 0:
            self._close_stream()
            raise MqttError("refused_%d" % body[1])
        self.connected = True
        self.connects += 1
        self._last_rx = ticks_ms()
        for topic, qos in self._subs:
            self._pid = self._pid % 65535 + 1
            await self._send(encode_subscribe(self._pid, topic, qos))
        self._up.set()
        if self.on_connect:
            self.on_connect()

    async def subscribe(self, topic, qos=0):
        """Subscribe now if connected, and again after every reconnect."""
        for sub in self._subs:
            if sub[0] == topic:
                sub[1] = qos
                break
        else:
            if len(self._subs) >= self.max_subscriptions:
                raise MqttError("too_many_subscriptions")
            self._subs.append([topic, qos])
        if self.connected:
            self._pid = self._pid % 65535 + 1
            await self._send(encode_subscribe(self._pid, topic, qos))

    async def publish(self, topic, payload, qos=0, retain=False, tries=3):
        """QoS 0: send once. QoS 1: resend (DUP) until PUBACK, ``tries`` times at most.

        Returns True when sent (QoS 0) or acknowledged (QoS 1), False otherwise.
        """
        if not self.connected:
            return False
        if not qos:
            try:
                await self._send(encode_publish(topic, payload, 0, retain))
                return True
            except OSError:
                self._lost()
                return False
        if len(self._inflight) >= self.max_inflight:
            self._count("inflight_full")
            return False
        self._pid = self._pid % 65535 + 1
        pid = self._pid
        done = asyncio.Event()
        self._inflight[pid] = done
        try:
            for attempt in range(tries):
                if not self.connected:
                    return False
                try:
                    await self._send(encode_publish(topic, payload, 1, retain, pid, attempt > 0))
                except OSError:
                    self._lost()
                    return False
                if await _wait_event(done, self.ack_timeout_ms):
                    return True
            return False
        finally:
            self._inflight.pop(pid, None)

    async def run(self):
        """Keep the connection up until ``close()``: connect, read, ping, reconnect with backoff."""
        backoff = self.reconnect_min_ms
        while not self._closing:
            if not self.connected:
                try:
                    await self.connect()
                    backoff = self.reconnect_min_ms
                except Exception as e:  # refused, unreachable, TLS handshake (ValueError)...
                    self._count("connect_" + type(e).__name__)
                    self._close_stream()
                    await asyncio.sleep(backoff / 1000)
                    backoff = min(backoff * 2, self.reconnect_max_ms)
                    continue
            try:
                await self._serve_once()
            except Exception as e:  # the connection is unusable: drop it and reconnect
                if isinstance(e, MqttError):
                    self._count(e.args[0] if e.args else "protocol")
                self._lost()
                if not self._closing:
                    self.reconnects += 1

    async def close(self):
        """Clean DISCONNECT: the broker discards the last will."""
        self._closing = True
        if self.connected:
            try:
                await self._send(_DISCONNECT)
            except OSError:
                pass
        self._lost()

    async def wait_connected(self):
        await self._up.wait()

    # -- internals

    def _count(self, reason):
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def _lost(self):
        was_connected = self.connected
        if was_connected and self._fill:
            # The connection ended inside a packet: that packet is lost.
            self._count("truncated")
        self.connected = False
        self._up = asyncio.Event()
        self._close_stream()
        for ev in self._inflight.values():
            ev.set()  # wake publishers; they see connected == False
        if was_connected and self.on_disconnect:
            self.on_disconnect()

    def _close_stream(self):
        w = self._writer
        self._reader = self._writer = None
        self._fill = 0
        if w is not None:
            try:
                w.close()
            except OSError:
                pass

    async def _send(self, data):
        w = self._writer
        if w is None:
            raise OSError("not connected")
        w.write(data)
        await w.drain()
        self._last_tx = ticks_ms()

    async def _read_more(self, timeout_ms):
        r = self._reader
        if r is None:
            raise OSError("not connected")
        room = len(self._buf) - self._fill
        data = await _wait_for_ms(r.read(min(room, 1024)), timeout_ms)
        if not data:
            raise OSError("closed")
        self._buf[self._fill : self._fill + len(data)] = data
        self._fill += len(data)

    async def _wait_packet(self, timeout_ms):
        while True:
            got = split_packet(self._buf, self._fill, self.max_packet)
            if got is not None:
                first, start, end = got
                body = bytes(self._buf[start:end])
                # shift what follows to the front (small: packets are small)
                rest = self._fill - end
                if rest:
                    self._buf[:rest] = self._buf[end : self._fill]
                self._fill = rest
                return first, body
            await self._read_more(timeout_ms)

    async def _serve_once(self):
        """Read one packet (or time out to send a ping); dispatch it."""
        ka_ms = self.keepalive * 1000
        since_rx = ticks_diff(ticks_ms(), self._last_rx)
        if ka_ms and since_rx > ka_ms + ka_ms // 2:
            raise MqttError("keepalive")  # broker silent: the link is dead
        if ka_ms and ticks_diff(ticks_ms(), self._last_tx) >= ka_ms // 2:
            await self._send(_PINGREQ)
        wait = ka_ms // 2 if ka_ms else 60000
        try:
            first, body = await self._wait_packet(wait)
        except asyncio.TimeoutError:
            return
        self._last_rx = ticks_ms()
        self._dispatch(first, body)
        if first >> 4 == PUBLISH and (first >> 1) & 3 == 1:
            try:
                _, _, _, _, pid = decode_publish(first, body)
                await self._send(encode_puback(pid))
            except MqttError:
                pass

    def _dispatch(self, first, body):
        kind = first >> 4
        try:
            if kind == PUBLISH:
                topic, payload, qos, retain, _pid = decode_publish(first, body)
                if qos == 2:
                    self._count("qos2")  # never subscribed with QoS 2
                    return
                if self.on_message:
                    self.on_message(topic, payload, retain)
            elif kind == PUBACK:
                ev = self._inflight.get(decode_pid(body))
                if ev is not None:
                    ev.set()
            elif kind == SUBACK:
                decode_pid(body)
            elif kind == PINGRESP:
                pass
            else:
                self._count("unexpected")
        except MqttError as e:
            self._count(e.args[0] if e.args else "malformed")


def tls_context(ca_file=None):
    """A TLS client context; with ``ca_file`` (PEM or DER) the broker's certificate must chain
    to it. MicroPython's mbedTLS takes DER only, so PEM is decoded here."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file:
        with open(ca_file, "rb") as f:
            data = f.read()
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=pem_to_der(data))
    else:
        ctx.check_hostname = False  # CPython refuses CERT_NONE otherwise
        ctx.verify_mode = ssl.CERT_NONE  # encrypted, not authenticated: say so in the config
    return ctx


def pem_to_der(data):
    """The first certificate of a PEM file as DER; DER input is returned unchanged."""
    import binascii

    begin = data.find(b"-----BEGIN CERTIFICATE-----")
    if begin < 0:
        return data
    end = data.find(b"-----END CERTIFICATE-----", begin)
    if end < 0:
        raise ValueError("PEM certificate without its END line")
    body = data[begin + len(b"-----BEGIN CERTIFICATE-----") : end]
    return binascii.a2b_base64(b"".join(body.split()))


async def _wait_for_ms(coro, ms):
    if hasattr(asyncio, "wait_for_ms"):
        return await asyncio.wait_for_ms(coro, ms)
    return await asyncio.wait_for(coro, ms / 1000)


async def _wait_event(ev, ms):
    try:
        await _wait_for_ms(ev.wait(), ms)
        return True
    except asyncio.TimeoutError:
        return False
