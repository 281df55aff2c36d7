"""A small mDNS / DNS-SD responder and browser (RFC 6762, RFC 6763) for the board.

MicroPython's built-in mDNS on the ESP32 only answers for the hostname, so the firmware
brings this one: it advertises the node as ``<node>._meshelect._udp.local.`` with the same
TXT records as the Pi agent, and browses for peers, the gateway (``_meshelect-gw._udp``) and
brokers (``_mqtt._tcp``).

Sans-IO like the core: ``Mdns.receive(data, addr, now)`` and ``Mdns.tick(now)`` return a list
of ``(packet, addr)`` to send; the caller owns the socket (see ``udp.py`` and ``app``).

Every untrusted input is bounded: a name is at most 255 bytes and 128 labels, a compression
pointer must point strictly backwards (so a loop is impossible) and at most 16 are followed,
at most 32 questions and 64 records are read per packet, at most ``max_services`` instances
and addresses are cached. A malformed packet raises ``DnsError`` inside the parser and is
counted in ``drops`` (reason -> count); nothing else escapes.
"""

import struct

MDNS_GROUP = "224.0.0.251"
MDNS_PORT = 5353

T_A = 1
T_PTR = 12
T_TXT = 16
T_AAAA = 28
T_SRV = 33
T_ANY = 255

_CLASS_IN = 1
_CACHE_FLUSH = 0x8000
_QU = 0x8000

_MAX_NAME = 255
_MAX_LABELS = 128
_MAX_JUMPS = 16
_MAX_QUESTIONS = 32
_MAX_RECORDS = 64
_MAX_TXT_ITEMS = 16

# RFC 6762 10: host records 120 s, others 75 min.
TTL_HOST = 120
TTL_OTHER = 4500

SERVICES_META = "_services._dns-sd._udp.local"


class DnsError(Exception):
    """Malformed packet; ``args[0]`` is the reason counted in ``drops``."""


# ---------------------------------------------------------------- parsing


def read_name(data, pos):
    """-> (name str without trailing dot, position after the name in the packet)."""
    labels = []
    total = 0
    jumps = 0
    end = -1  # where parsing resumes after the first pointer
    limit = pos  # a pointer must point before the label that holds it
    n = len(data)
    while True:
        if pos >= n:
            raise DnsError("truncated")
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0 == 0xC0:
            if pos + 1 >= n:
                raise DnsError("truncated")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= limit:
                raise DnsError("loop")  # forward or self pointer: a loop, or nonsense
            jumps += 1
            if jumps > _MAX_JUMPS:
                raise DnsError("loop")
            if end < 0:
                end = pos + 2
            pos = target
            limit = target
            continue
        if length & 0xC0:
            raise DnsError("label_type")
        pos += 1
        if pos + length > n:
            raise DnsError("truncated")
        total += length + 1
        if total > _MAX_NAME or len(labels) >= _MAX_LABELS:
            raise DnsError("name_too_long")
        try:
            labels.append(str(bytes(data[pos : pos + length]), "utf-8"))
        except UnicodeError:
            raise DnsError("utf8")
        pos += length
    return ".".join(labels), (end if end >= 0 else pos)


def _parse_txt(rdata):
    items = {}
    pos = 0
    n = len(rdata)
    while pos < n:
        length = rdata[pos]
        pos += 1
        if pos + length > n:
            raise DnsError("truncated")
        if length and len(items) < _MAX_TXT_ITEMS:
            item = bytes(rdata[pos : pos + length])
            eq = item.find(b"=")
            try:
                if eq < 0:
                    key, value = str(item, "utf-8"), ""
                else:
                    key, value = str(item[:eq], "utf-8"), str(item[eq + 1 :], "utf-8")
            except UnicodeError:
                raise DnsError("utf8")
            key = key.lower()
            if key not in items:  # RFC 6763 6.4: the first occurrence wins
                items[key] = value
        pos += length
    return items


def parse(data):
    """-> (msg_id, flags, questions, records). Raises DnsError on any malformed input.

    questions: [(name, qtype, unicast_wanted)]; records: [(name, rtype, ttl, value)] where value
    is a name (PTR), (priority, weight, port, target) (SRV), a dict (TXT), a dotted IPv4 (A),
    or None for types this module does not use.
    """
    if len(data) < 12:
        raise DnsError("truncated")
    msg_id, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", data, 0)
    if qd > _MAX_QUESTIONS or an + ns + ar > _MAX_RECORDS:
        raise DnsError("too_many")
    pos = 12
    questions = []
    for _ in range(qd):
        name, pos = read_name(data, pos)
        if pos + 4 > len(data):
            raise DnsError("truncated")
        qtype, qclass = struct.unpack_from("!HH", data, pos)
        pos += 4
        questions.append((name, qtype, bool(qclass & _QU)))
    records = []
    for _ in range(an + ns + ar):
        name, pos = read_name(data, pos)
        if pos + 10 > len(data):
            raise DnsError("truncated")
        rtype, _rclass, ttl, rdlen = struct.unpack_from("!HHIH", data, pos)
        pos += 10
        end = pos + rdlen
        if end > len(data):
            raise DnsError("truncated")
        value = None
        if rtype == T_PTR:
            value, after = read_name(data, pos)
            if after > end:
                raise DnsError("rdata")
        elif rtype == T_SRV:
            if rdlen < 7:
                raise DnsError("rdata")
            prio, weight, port = struct.unpack_from("!HHH", data, pos)
            target, after = read_name(data, pos + 6)
            if after > end:
                raise DnsError("rdata")
            value = (prio, weight, port, target)
        elif rtype == T_TXT:
            value = _parse_txt(memoryview(data)[pos:end])
        elif rtype == T_A:
            if rdlen != 4:
                raise DnsError("rdata")
            value = "%d.%d.%d.%d" % (data[pos], data[pos + 1], data[pos + 2], data[pos + 3])
        records.append((name, rtype, ttl, value))
        pos = end
    return msg_id, flags, questions, records


# ---------------------------------------------------------------- building


class _Writer:
    """Builds one DNS message with name compression."""

    def __init__(self, msg_id, flags):
        self.buf = bytearray(12)
        self.msg_id = msg_id
        self.flags = flags
        self.counts = [0, 0, 0, 0]
        self.offsets = {}  # lower-case name suffix -> offset (lookups only, order unused)

    def name(self, name):
        labels = name.split(".")
        for i in range(len(labels)):
            suffix = ".".join(labels[i:]).lower()
            off = self.offsets.get(suffix)
            if off is not None:
                self.buf += struct.pack("!H", 0xC000 | off)
                return
            if len(self.buf) < 0x3FFF:
                self.offsets[suffix] = len(self.buf)
            label = labels[i].encode()
            self.buf.append(len(label))
            self.buf += label
        self.buf.append(0)

    def question(self, name, qtype):
        self.name(name)
        self.buf += struct.pack("!HH", qtype, _CLASS_IN)
        self.counts[0] += 1

    def record(self, section, name, rtype, ttl, value, unique):
        self.name(name)
        cls = _CLASS_IN | (_CACHE_FLUSH if unique else 0)
        self.buf += struct.pack("!HHI", rtype, cls, ttl)
        at = len(self.buf)
        self.buf += b"\x00\x00"
        if rtype == T_PTR:
            self.name(value)
        elif rtype == T_SRV:
            self.buf += struct.pack("!HHH", value[0], value[1], value[2])
            self.name(value[3])
        elif rtype == T_TXT:
            for key in sorted(value):
                item = ("%s=%s" % (key, value[key])).encode()[:255]
                self.buf.append(len(item))
                self.buf += item
            if not value:
                self.buf.append(0)
        elif rtype == T_A:
            self.buf += bytes(int(x) for x in value.split("."))
        struct.pack_into("!H", self.buf, at, len(self.buf) - at - 2)
        self.counts[section] += 1

    def finish(self):
        struct.pack_into("!HHHHHH", self.buf, 0, self.msg_id, self.flags, *self.counts)
        return bytes(self.buf)


# ---------------------------------------------------------------- responder + browser


class Service:
    """One discovered service instance."""

    __slots__ = ("addr", "expires", "host", "name", "port", "stype", "txt")

    def __init__(self, name, stype):
        self.name = name
        self.stype = stype
        self.host = None
        self.port = 0
        self.txt = {}
        self.addr = None
        self.expires = 0

    def __repr__(self):
        return "Service(%s %s:%d %r)" % (self.name, self.addr, self.port, sorted(self.txt.items()))


def _lower(name):
    return name.lower()


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
        self.host = _host_label(host or instance) + ".local"
        self.stype = stype
        # The instance is one DNS label here: a dot in it would split it (RFC 6763 4.3 allows
        # escaped dots; peers read the node id from the TXT, so nothing is lost).
        self.instance = "%s.%s" % (instance.replace(".", "-"), stype)
        self.port = port
        self.ip = ip
        self.txt = dict(txt)
        self.browse_types = list(browse)
        self.max_services = max_services
        self.max_interval_ms = max_interval_ms
        self.services = {}  # lower-case instance name -> Service
        self.addresses = {}  # lower-case host -> [ip, expires]
        self.drops = {}
        self.answered = 0
        self._next_query = 0
        self._interval = 1000
        self._announce_left = 2
        self._next_announce = 0
        self._last_sent = {}  # (name, type) -> ms, RFC 6762 6.2 rate limit

    # -- public

    def set_txt(self, txt, now):
        """Change the TXT (role, score): re-announce so browsers update."""
        txt = dict(txt)
        if txt != self.txt:
            self.txt = txt
            self._announce_left = 2
            self._next_announce = now

    def found(self, stype, now):
        """Live instances of ``stype``, sorted by name (no dict order)."""
        out = []
        key = _lower(stype)
        for name in sorted(self.services):
            svc = self.services[name]
            if _lower(svc.stype) == key and svc.expires > now:
                if svc.addr is None and svc.host is not None:
                    entry = self.addresses.get(_lower(svc.host))
                    if entry is not None and entry[1] > now:
                        svc.addr = entry[0]
                out.append(svc)
        return out

    def tick(self, now):
        """Announcements, periodic browse queries, expiry. -> [(packet, addr)]."""
        out = []
        if self._announce_left and now >= self._next_announce:
            self._announce_left -= 1
            self._next_announce = now + 1000
            out.append((self._response(0, TTL_OTHER, True), (MDNS_GROUP, MDNS_PORT)))
        if self.browse_types and now >= self._next_query:
            self._next_query = now + self._interval
            self._interval = min(self._interval * 2, self.max_interval_ms)
            out.append((self._browse_query(now), (MDNS_GROUP, MDNS_PORT)))
        self._expire(now)
        return out

    def goodbye(self):
        """Packet withdrawing our records (TTL 0), to send on shutdown."""
        return self._response(0, 0, True)

    def receive(self, data, addr, now):
        """Handle one packet from ``addr`` (ip, port). -> [(packet, addr)] to send."""
        try:
            msg_id, flags, questions, records = parse(data)
        except DnsError as e:
            self._count(e.args[0])
            return []
        except Exception:  # belt and braces: a parser bug must not kill the node
            self._count("error")
            return []
        if flags & 0x8000:
            self._learn(records, now)
            return []
        return self._answer(msg_id, questions, records, addr, now)

    # -- internals

    def _count(self, reason):
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def _own_records(self, ttl):
        """(section, name, type, ttl, value, unique) of everything we advertise."""
        host_ttl = TTL_HOST if ttl else 0
        return [
            (1, self.stype, T_PTR, ttl, self.instance, False),
            (3, self.instance, T_SRV, host_ttl, (0, 0, self.port, self.host), True),
            (3, self.instance, T_TXT, ttl, self.txt, True),
            (3, self.host, T_A, host_ttl, self.ip, True),
        ]

    def _response(self, msg_id, ttl, announce):
        w = _Writer(msg_id, 0x8400)
        for section, name, rtype, rttl, value, unique in self._own_records(ttl):
            if announce:
                section = 1  # announcements put everything in the answer section
            w.record(section, name, rtype, rttl, value, unique)
        return w.finish()

    def _answer(self, msg_id, questions, known, addr, now):
        wanted = []  # indexes into _own_records
        own = self._own_records(TTL_OTHER)
        want_meta = False
        for qname, qtype, _unicast in questions:
            q = _lower(qname)
            if q == SERVICES_META and qtype in (T_PTR, T_ANY):
                want_meta = True
            for i in range(len(own)):
                rec = own[i]
                matches = _lower(rec[1]) == q and (qtype == T_ANY or qtype == rec[2])
                if matches and i not in wanted:
                    wanted.append(i)
        if not wanted and not want_meta:
            return []
        # Known-answer suppression (RFC 6762 7.1): the querier already holds our PTR.
        own_ptr = _lower(self.instance)
        for _name, rtype, ttl, value in known:
            if (
                rtype == T_PTR
                and value is not None
                and _lower(value) == own_ptr
                and ttl * 2 >= TTL_OTHER
                and 0 in wanted
            ):
                wanted.remove(0)
        legacy = addr[1] != MDNS_PORT  # one-shot querier: answer it directly (RFC 6762 6.7)
        w = _Writer(msg_id if legacy else 0, 0x8400)
        if legacy:
            for qname, qtype, _unicast in questions:
                w.question(qname, qtype)
        sent = False
        if want_meta:
            w.record(1, SERVICES_META, T_PTR, TTL_OTHER, self.stype, False)
            sent = True
        for i in sorted(wanted):
            rec = own[i]
            key = (rec[1], rec[2])
            if not legacy:
                last = self._last_sent.get(key)
                if last is not None and now - last < 250:
                    continue
                self._last_sent[key] = now
            w.record(1, rec[1], rec[2], rec[3] if rec[2] != T_A else TTL_HOST, rec[4], rec[5])
            sent = True
        if not sent:
            return []
        # Additional records (RFC 6763 12): whatever the answer points to.
        if 0 in wanted or 1 in wanted:
            for i in (1, 2, 3):
                if i not in wanted:
                    rec = own[i]
                    w.record(3, rec[1], rec[2], TTL_HOST if i != 2 else TTL_OTHER, rec[4], True)
        self.answered += 1
        dest = addr if legacy else (MDNS_GROUP, MDNS_PORT)
        return [(w.finish(), dest)]

    def _learn(self, records, now):
        browse = [_lower(t) for t in self.browse_types]
        own = _lower(self.instance)
        for name, rtype, ttl, value in records:
            lname = _lower(name)
            if rtype == T_PTR and lname in browse and value is not None:
                key = _lower(value)
                if key == own:
                    continue
                svc = self.services.get(key)
                if ttl == 0:
                    if svc is not None:
                        svc.expires = now + 1000  # goodbye: gone in a second (RFC 6762 10.1)
                    continue
                if svc is None:
                    if len(self.services) >= self.max_services:
                        self._count("cache_full")
                        continue
                    svc = Service(value, name)
                    self.services[key] = svc
                svc.expires = now + ttl * 1000
        for name, rtype, ttl, value in records:
            lname = _lower(name)
            if rtype == T_A:
                if ttl == 0:
                    self.addresses.pop(lname, None)
                elif lname in self.addresses or len(self.addresses) < self.max_services:
                    self.addresses[lname] = [value, now + ttl * 1000]
                continue
            svc = self.services.get(lname)
            if svc is None:
                continue
            if rtype == T_SRV:
                svc.port = value[2]
                if svc.host is None or _lower(svc.host) != _lower(value[3]):
                    svc.addr = None
                svc.host = value[3]
            elif rtype == T_TXT:
                svc.txt = value
        for svc in self.services.values():
            if svc.host is not None:
                entry = self.addresses.get(_lower(svc.host))
                if entry is not None:
                    svc.addr = entry[0]

    def _browse_query(self, now):
        w = _Writer(0, 0)
        for stype in self.browse_types:
            w.question(stype, T_PTR)
        # Instances we know but cannot reach yet: ask for their SRV/TXT and host address.
        asked = 0
        for key in sorted(self.services):
            svc = self.services[key]
            if asked >= 4:
                break
            if svc.host is None:
                w.question(svc.name, T_SRV)
                w.question(svc.name, T_TXT)
                asked += 1
            elif svc.addr is None:
                w.question(svc.host, T_A)
                asked += 1
        # Known answers (RFC 6762 7.1) so responders that we already know stay quiet.
        for key in sorted(self.services):
            svc = self.services[key]
            left = (svc.expires - now) // 1000
            if left * 2 > TTL_OTHER and w.counts[1] < 8:
                w.record(1, svc.stype, T_PTR, left, svc.name, False)
        return w.finish()

    def _expire(self, now):
        for key in sorted(self.services):
            if self.services[key].expires <= now:
                del self.services[key]
        for key in sorted(self.addresses):
            if self.addresses[key][1] <= now:
                del self.addresses[key]


def _host_label(name):
    """A DNS-safe host label from a node id (letters, digits, '-')."""
    out = []
    for ch in name:
        out.append(ch if ch.isalpha() or ch.isdigit() or ch == "-" else "-")
    return "".join(out)[:63] or "node"
