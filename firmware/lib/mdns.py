"""A small mDNS / DNS-SD responder and browser (RFC 6762, RFC 6763) for the board.

MicroPython's built-in mDNS on the ESP32 only answers for the hostname, so the firmware
brings this one: it advertises the node as ``<node>._meshelect._udp.local.`` with the same
TXT records as the Pi agent, and browses for peers, the gateway (``_meshelect-gw._udp``) and
brokers (``_mqtt._tcp``).

Sans-IO like the core: ``Mdns.receive(data, addr, now)`` and ``Mdns.tick(now)`` return a list
of ``(packet, addr)`` to send (a packet is a ``bytearray``, built in place); the caller owns
the socket (see ``udp.py`` and ``app``).

Every untrusted input is bounded: a name is at most 255 bytes, a compression pointer must
point strictly backwards (so a loop is impossible) and at most 16 are followed, at most 32
questions and 64 records are read per packet, at most ``max_services`` instances are cached.
A malformed packet raises ``ValueError(reason)`` inside the parser and is counted in ``drops``
(reason -> count); nothing else escapes.

Written to cost little heap on the board, where every function, class, global and distinct
name is an object for as long as the module is loaded: constants are ``const``, one class holds
the protocol (and a bare one each service found), and the cache keeps only services of the
browsed types: an address is stored in the service that names its host, not in a cache of its
own that every host on the LAN could fill.
"""

import struct

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


MDNS_GROUP = "224.0.0.251"
MDNS_PORT = const(5353)

_T_A = const(1)
_T_PTR = const(12)
_T_TXT = const(16)
_T_SRV = const(33)
_T_ANY = const(255)

# RFC 6762 10: host records (SRV, A) 120 s, others 75 min.
_TTL_HOST = const(120)
_TTL_OTHER = const(4500)

# Tests are written `x == A or x == B`, not `x in (A, B)` (ruff's SIM109): on MicroPython each
# such tuple would be one more object on the heap for as long as the module is loaded.

# The types of our records, in the order they go out: 0 the DNS-SD meta PTR (RFC 6763 9),
# 1 our PTR, 2 SRV, 3 TXT, 4 A.
_OWN = const((_T_PTR, _T_PTR, _T_SRV, _T_TXT, _T_A))
_META = const("_services._dns-sd._udp.local")

# Type, class, TTL and rdata length of a record: packed in place once the values are known.
_RR_HEAD = const(b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")


def _decode(data, pos):
    """Reads the name at ``pos`` in ``data``: -> (name without trailing dot, position after it)."""
    name = bytearray()
    jumps = 0
    end = 0  # where parsing resumes after the first pointer
    limit = pos  # a pointer must point before the label that holds it
    while True:
        if pos >= len(data):
            raise ValueError("truncated")
        length = data[pos]
        if length >= 0xC0:
            if pos + 1 >= len(data):
                raise ValueError("truncated")
            target = (length & 0x3F) << 8 | data[pos + 1]
            jumps += 1
            if target >= limit or jumps > 16:
                raise ValueError("loop")  # forward or self pointer: a loop, or nonsense
            if not end:
                end = pos + 2
            pos = limit = target
        elif length >= 0x40:
            raise ValueError("label_type")
        elif length:
            pos += 1
            if pos + length > len(data):
                raise ValueError("truncated")
            if name:
                name.append(0x2E)  # "."
            name.extend(data[pos : pos + length])
            if len(name) >= 255:
                raise ValueError("name_too_long")
            pos += length
        else:
            break
    try:
        return str(name, "utf-8"), end or pos + 1
    except UnicodeError:
        raise ValueError("utf8")


def _encode(buf, seen, name, qtype=0):
    """Appends ``name`` to ``buf`` in wire form, as a pointer to an earlier copy of any suffix
    (RFC 1035 4.1.4; ``seen``: lower-case suffix -> offset). With ``qtype``: as a question."""
    raw = name.encode()
    low = raw.lower()
    start = 0
    while start < len(raw):
        suffix = low[start:] if start else low
        off = seen.get(suffix)
        if off is not None:
            buf.append(0xC0 | off >> 8)
            buf.append(off & 0xFF)
            break
        if len(buf) < 0x3FFF:
            seen[suffix] = len(buf)
        dot = raw.find(b".", start)
        if dot < 0:
            dot = len(raw)
        buf.append(dot - start)
        buf.extend(raw[start:dot])
        start = dot + 1
    else:
        buf.append(0)
    if qtype:
        buf.extend(b"\x00\x00\x00\x01")
        struct.pack_into("!H", buf, len(buf) - 4, qtype)


class Service:
    """One discovered service instance: ``name``, ``stype``, ``host`` (lower case), ``port``,
    ``txt`` (dict), ``addr`` (dotted IPv4 or None), ``expires`` (ms). Set by ``Mdns``."""


class Mdns:
    """Responder for one service instance, and browser for a few service types.

    ``ip`` is this node's IPv4 address (A record). ``browse`` lists service types such as
    ``_meshelect._udp.local``. Query intervals grow from 1 s to ``max_interval_ms``.
    """

    def __init__(
        self,
        instance,
        stype,
        port,
        ip,
        txt,
        browse=(),
        max_services=24,
        max_interval_ms=60000,
        host=None,
    ):
        # A DNS-safe host label from the node id (letters, digits, '-').
        label = ""
        for ch in host or instance:
            label += ch if ch.isalpha() or ch.isdigit() or ch == "-" else "-"
        self.host = (label[:63] or "node") + ".local"
        self.stype = stype
        # The instance is one DNS label here: a dot in it would split it (RFC 6763 4.3 allows
        # escaped dots; peers read the node id from the TXT, so nothing is lost).
        self.instance = "%s.%s" % (instance.replace(".", "-"), stype)
        self.port = port
        self.ip = ip
        self.txt = dict(txt)
        self.browse = []  # lower case; the caller's own string when it already is
        for stype in browse:
            low = stype.lower()
            self.browse.append(stype if low == stype else low)
        self.max_services = max_services
        self.max_interval_ms = max_interval_ms
        self.services = {}  # lower-case instance name -> Service (lookups only, order unused)
        self.drops = {}
        self.answered = 0
        # The schedule: next query (ms), query interval (ms), announcements left, next
        # announcement (ms). (One list, not four attributes: each attribute's name would be
        # interned for the node's life.)
        self._timers = [0, 1000, 2, 0]
        # False when port 5353 is another responder's (ESP-IDF's on a stock image): we then
        # only browse, with one-shot queries from an ephemeral port that responders answer by
        # unicast (RFC 6762 5.1, 6.7), and neither announce nor answer.
        self.announcing = True
        self._sent = [None, None, None, None, None]  # ms our record i last went out (RFC 6762 6.2)

    # -- public

    def set_txt(self, txt, now):
        """Change the TXT (role, score): re-announce so browsers update."""
        if txt != self.txt:
            self.txt = dict(txt)
            self._timers[2] = 2
            self._timers[3] = now

    def rebase(self, ms):
        """The caller set its clock back by ``ms``: our deadlines and expiries go with it."""
        self._timers[0] -= ms
        self._timers[3] -= ms
        for svc in self.services.values():
            svc.expires -= ms
        sent = self._sent
        for i in range(len(sent)):
            if sent[i] is not None:
                sent[i] -= ms

    def found(self, stype, now):
        """Live instances of ``stype``, sorted by name (no dict order)."""
        out = []
        stype = stype.lower()
        for key in sorted(self.services):
            svc = self.services[key]
            if svc.stype == stype and svc.expires > now:
                out.append(svc)
        return out

    def tick(self, now):
        """Announcements, periodic browse queries, expiry. -> [(packet, addr)]."""
        out = []
        timers = self._timers
        if self.announcing and timers[2] and now >= timers[3]:
            timers[2] -= 1
            timers[3] = now + 1000
            out.append((self.goodbye(True), (MDNS_GROUP, MDNS_PORT)))
        if self.browse and now >= timers[0]:
            timers[0] = now + timers[1]
            timers[1] = min(timers[1] * 2, self.max_interval_ms)
            buf = bytearray(12)
            seen = {}
            for stype in self.browse:
                _encode(buf, seen, stype, _T_PTR)
            questions = len(self.browse)
            # Instances we know but cannot reach yet: ask for their SRV/TXT and host address.
            keys = sorted(self.services)
            asked = 0
            for key in keys:
                svc = self.services[key]
                if asked >= 4:
                    break
                if svc.host is None:
                    _encode(buf, seen, svc.name, _T_SRV)
                    _encode(buf, seen, svc.name, _T_TXT)
                    questions += 2
                    asked += 1
                elif svc.addr is None:
                    _encode(buf, seen, svc.host, _T_A)
                    questions += 1
                    asked += 1
            # Known answers (RFC 6762 7.1) so responders that we already know stay quiet.
            answers = 0
            for key in keys:
                svc = self.services[key]
                left = (svc.expires - now) // 1000
                if left * 2 > _TTL_OTHER and answers < 8:
                    self._put(buf, seen, 1, left, svc.stype, svc.name)
                    answers += 1
            struct.pack_into("!HHHHHH", buf, 0, 0, 0, questions, answers, 0, 0)
            out.append((buf, (MDNS_GROUP, MDNS_PORT)))
        for key in list(self.services):  # every expired one goes: the order does not matter
            if self.services[key].expires <= now:
                del self.services[key]
        return out

    def goodbye(self, live=False):
        """Packet withdrawing our records (TTL 0), to send on shutdown. With ``live``, the same
        records with their TTLs: the announcement (RFC 6762 8.3)."""
        buf = bytearray(12)
        seen = {}
        for i in range(1, 5):  # all in the answer section
            self._put(buf, seen, i, None if live else 0)
        struct.pack_into("!HHHHHH", buf, 0, 0, 0x8400, 0, 4, 0, 0)
        return buf

    def receive(self, data, addr, now):
        """Handle one packet from ``addr`` (ip, port). -> [(packet, addr)] to send."""
        try:
            if len(data) < 12:
                raise ValueError("truncated")
            data = memoryview(data)  # slices of it are views, not copies
            msg_id, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", data, 0)
            if qd > 32 or an + ns + ar > 64:
                raise ValueError("too_many")
            pos = 12
            questions = []  # (name, qtype)
            for _ in range(qd):
                name, pos = _decode(data, pos)
                if pos + 4 > len(data):
                    raise ValueError("truncated")
                questions.append((name, data[pos] << 8 | data[pos + 1]))
                pos += 4
            # (name, rtype, ttl, value): value is a name (PTR), (port, target) (SRV), a dict
            # (TXT), a dotted IPv4 (A), or None for types this module does not use.
            records = []
            for _ in range(an + ns + ar):
                name, pos = _decode(data, pos)
                if pos + 10 > len(data):
                    raise ValueError("truncated")
                rtype, _cls, ttl, end = struct.unpack_from("!HHIH", data, pos)
                pos += 10
                end += pos
                if end > len(data):
                    raise ValueError("truncated")
                value = None
                if rtype == _T_PTR or rtype == _T_SRV:  # noqa: SIM109
                    if rtype == _T_SRV and end - pos < 7:
                        raise ValueError("rdata")
                    value, start = _decode(data, pos if rtype == _T_PTR else pos + 6)
                    if start > end:
                        raise ValueError("rdata")
                    if rtype == _T_SRV:
                        value = (data[pos + 4] << 8 | data[pos + 5], value)
                elif rtype == _T_TXT:
                    value = {}
                    while pos < end:
                        start = pos + 1
                        pos = start + data[pos]
                        if pos > end:
                            raise ValueError("truncated")
                        if pos > start and len(value) < 16:
                            try:
                                item = str(data[start:pos], "utf-8")
                            except UnicodeError:
                                raise ValueError("utf8")
                            eq = item.find("=")
                            key = (item if eq < 0 else item[:eq]).lower()
                            if key not in value:  # RFC 6763 6.4: the first occurrence wins
                                value[key] = "" if eq < 0 else item[eq + 1 :]
                elif rtype == _T_A:
                    if end - pos != 4:
                        raise ValueError("rdata")
                    value = "%d.%d.%d.%d" % (data[pos], data[pos + 1], data[pos + 2], data[end - 1])
                records.append((name, rtype, ttl, value))
                pos = end
        except Exception as e:  # malformed: ValueError(reason); anything else is a parser bug
            reason = e.args[0] if isinstance(e, ValueError) and e.args else "error"
            self.drops[reason] = self.drops.get(reason, 0) + 1
            return []
        if flags & 0x8000:
            self._learn(records, now)
            return []
        if not self.announcing:
            return []
        return self._answer(msg_id, questions, records, addr, now)

    # -- building packets

    def _put(self, buf, seen, i, ttl=None, name=None, target=None):
        """Appends our record ``i`` (see _OWN) with its TTL (RFC 6762 10: host records 120 s);
        given a ``name``, a PTR ``name`` -> ``target`` instead (a known answer). SRV, TXT and A
        are unique to us (cache-flush bit)."""
        rtype = _OWN[i]
        if name is None:  # one of ours
            name = target = self.instance
            if i == 0:
                name, target = _META, self.stype
            elif i == 1:
                name = self.stype
            elif i == 4:
                name = self.host
        if ttl is None:
            ttl = _TTL_HOST if rtype == _T_SRV or rtype == _T_A else _TTL_OTHER  # noqa: SIM109
        _encode(buf, seen, name)
        at = len(buf) + 8  # where the rdata length goes
        buf.extend(_RR_HEAD)
        struct.pack_into("!HHIH", buf, at - 8, rtype, 1 if rtype == _T_PTR else 0x8001, ttl, 0)
        if rtype == _T_PTR:
            _encode(buf, seen, target)
        elif rtype == _T_SRV:
            buf.extend(b"\x00\x00\x00\x00")  # priority, weight
            buf.append(self.port >> 8)
            buf.append(self.port & 0xFF)
            _encode(buf, seen, self.host)
        elif rtype == _T_TXT:
            for key in sorted(self.txt):
                item = ("%s=%s" % (key, self.txt[key])).encode()[:255]
                buf.append(len(item))
                buf.extend(item)
            if not self.txt:
                buf.append(0)
        else:
            for part in self.ip.split("."):
                buf.append(int(part))
        struct.pack_into("!H", buf, at, len(buf) - at - 2)

    def _answer(self, msg_id, questions, known, addr, now):
        stype = self.stype.lower()
        instance = self.instance.lower()
        host = self.host.lower()
        owners = (_META, stype, instance, instance, host)
        wanted = 0  # bit i: our record i was asked for
        for name, qtype in questions:
            name = name.lower()
            for i in range(5):
                if name == owners[i] and (qtype == _T_ANY or qtype == _OWN[i]):
                    wanted |= 1 << i
        # Known-answer suppression (RFC 6762 7.1): the querier already holds our PTR.
        for _, rtype, ttl, value in known:
            if rtype == _T_PTR and value.lower() == instance and ttl * 2 >= _TTL_OTHER:
                wanted &= ~2
        if not wanted:
            return []
        # A one-shot querier (not from port 5353) gets its answer directly, with its id and
        # questions (RFC 6762 6.7); others get it multicast.
        legacy = addr[1] != MDNS_PORT
        if not legacy:
            msg_id = 0
            questions = ()
        buf = bytearray(12)
        seen = {}
        for name, qtype in questions:
            _encode(buf, seen, name, qtype)
        answers = 0
        for i in range(5):
            if wanted >> i & 1:
                if i and not legacy:
                    last = self._sent[i]
                    if last is not None and now - last < 250:
                        continue
                    self._sent[i] = now
                self._put(buf, seen, i)
                answers += 1
        if not answers:
            return []
        # Additional records (RFC 6763 12): whatever the PTR or SRV answer points to.
        extra = 0
        if wanted & 6:
            for i in range(2, 5):
                if not wanted >> i & 1:
                    self._put(buf, seen, i)
                    extra += 1
        struct.pack_into("!HHHHHH", buf, 0, msg_id, 0x8400, len(questions), answers, 0, extra)
        self.answered += 1
        return [(buf, addr if legacy else (MDNS_GROUP, MDNS_PORT))]

    # -- the cache

    def _learn(self, records, now):
        instance = self.instance.lower()
        services = self.services
        for name, rtype, ttl, value in records:
            if rtype != _T_PTR:
                continue
            name = name.lower()
            if name not in self.browse:
                continue
            key = value.lower()
            if key == instance:
                continue
            svc = services.get(key)
            if not ttl:
                if svc is not None:
                    svc.expires = now + 1000  # goodbye: gone in a second (RFC 6762 10.1)
                continue
            if svc is None:
                if len(services) >= self.max_services:
                    self.drops["cache_full"] = self.drops.get("cache_full", 0) + 1
                    continue
                svc = Service()
                svc.name = value
                svc.stype = self.browse[self.browse.index(name)]  # shared, not a copy
                svc.host = svc.addr = None
                svc.port = 0
                svc.txt = {}
                services[value if key == value else key] = svc  # one string when already lower
            svc.expires = now + ttl * 1000
        # Then what the services point to: SRV and TXT, then the hosts' addresses (whatever
        # order they came in). An address nobody names is not kept: a later query asks for it.
        for name, rtype, _ttl, value in records:
            if rtype == _T_SRV or rtype == _T_TXT:  # noqa: SIM109
                svc = services.get(name.lower())
                if svc is not None and rtype == _T_TXT:
                    svc.txt = value
                elif svc is not None:
                    svc.port = value[0]
                    host = value[1].lower()
                    if host != svc.host:
                        svc.host = host
                        svc.addr = None
        for name, rtype, ttl, value in records:
            if rtype == _T_A and ttl:
                name = name.lower()
                for svc in services.values():  # every match is updated: the order does not matter
                    if svc.host == name:
                        svc.addr = value
