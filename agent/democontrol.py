"""How `meshelect demo` is told to break things: keys in its terminal and a control socket.

Keys (only when stdin is a terminal and the demo runs in its foreground): ``k`` kill -9 the
leader, ``s`` stop it gracefully, ``b`` drain its battery, ``p`` partition the mesh or heal it,
``h`` help. The terminal is put in cbreak mode (keys without Enter; Ctrl-C still stops the
demo) and restored at the end.

The control socket is a Unix socket in the demo's folder; the gateway started by the demo
(``--demo-control PATH``) uses it for the dashboard's buttons. One JSON object per line, both
ways; a connection may send any number of requests:

- ``{"do": "kill"}`` (an action of agent/demoactions.py) -> ``{"ok": true, "event": {...}}``
  or ``{"ok": false, "error": "why not"}``
- ``{"watch": true}`` -> ``{"ok": true, "actions": {name: label}, "partitioned": bool}``, then
  ``{"event": {...}}`` for every action done from then on, by anyone (keys included)

A line that is not such an object is answered with an error; a client that sends more than
``MAX_LINE`` bytes without a newline, or does not read what it is sent, is disconnected.
Everything runs in the demo's one thread, from its selector loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import sys
import termios
import tty
from collections.abc import Callable
from typing import Any

from agent.demoactions import ACTIONS, ActionError, Actions

MAX_LINE = 4096
SEND_TIMEOUT_S = 1.0
KEYS = {"k": "kill", "s": "stop", "b": "drain"}
KEY_HELP = (
    "keys: k kill -9 the leader, s stop the leader gracefully, b drain the leader's battery, "
    "p partition the mesh / heal it, h this help, Ctrl-C stop the demo"
)

Say = Callable[[str], None]


class Control:
    """Runs actions for keys and socket clients, and tells every watcher what was done."""

    def __init__(self, actions: Actions, selector: selectors.BaseSelector, say: Say) -> None:
        self.actions = actions
        self.selector = selector
        self.say = say
        self.server: socket.socket | None = None
        self.path: str | None = None
        self.clients: dict[socket.socket, bytearray] = {}
        self.watchers: set[socket.socket] = set()
        self._tty: tuple[int, list[Any]] | None = None

    # -- actions ---------------------------------------------------------------------------

    def run(self, action: str, source: str) -> dict[str, Any]:
        """Do ``action``; print and broadcast its event. Raises ActionError."""
        event = self.actions.do(action, source)
        self.say(event["text"])
        line = _line({"event": event})
        for watcher in sorted(self.watchers, key=lambda s: s.fileno()):
            self._send(watcher, line)
        return event

    # -- the socket ------------------------------------------------------------------------

    def listen(self, path: str) -> None:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        os.chmod(path, 0o600)  # the demo's user only
        server.listen(8)
        server.setblocking(False)
        self.server, self.path = server, path
        self.selector.register(server, selectors.EVENT_READ, self._accept)

    def _accept(self, server: socket.socket) -> None:
        try:
            client, _ = server.accept()
        except OSError:
            return
        client.settimeout(SEND_TIMEOUT_S)  # recv only runs when the selector says readable
        self.clients[client] = bytearray()
        self.selector.register(client, selectors.EVENT_READ, self._readable)

    def _readable(self, client: socket.socket) -> None:
        try:
            data = client.recv(MAX_LINE)
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        buffer = self.clients[client]
        buffer += data
        while b"\n" in buffer:
            line, _, rest = bytes(buffer).partition(b"\n")
            buffer[:] = rest
            self._request(client, line)
            if client not in self.clients:
                return
        if len(buffer) > MAX_LINE:
            self._drop(client)

    def _request(self, client: socket.socket, line: bytes) -> None:
        try:
            request = json.loads(line)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            self._send(client, _line({"ok": False, "error": "expected a JSON object"}))
            return
        if request.get("watch") is True:
            self.watchers.add(client)
            reply = {"ok": True, "actions": ACTIONS, "partitioned": self.actions.halves is not None}
            self._send(client, _line(reply))
            return
        action = request.get("do")
        if not isinstance(action, str):
            self._send(client, _line({"ok": False, "error": 'expected {"do": ACTION}'}))
            return
        try:
            event = self.run(action, "dashboard")
        except ActionError as exc:
            self.say("cannot %s: %s" % (ACTIONS.get(action, action), exc))
            self._send(client, _line({"ok": False, "error": str(exc)}))
            return
        self._send(client, _line({"ok": True, "event": event}))

    def _send(self, client: socket.socket, data: bytes) -> None:
        if client not in self.clients:
            return
        try:
            client.sendall(data)
        except OSError:
            self._drop(client)  # gone, or not reading: it reconnects if it cares

    def _drop(self, client: socket.socket) -> None:
        self.watchers.discard(client)
        if self.clients.pop(client, None) is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(client)
            client.close()

    # -- the keyboard ----------------------------------------------------------------------

    def keys(self) -> bool:
        """Read single keys from stdin if it is this demo's foreground terminal."""
        fd = sys.stdin.fileno() if sys.stdin is not None else -1
        try:
            if fd < 0 or not os.isatty(fd) or os.tcgetpgrp(fd) != os.getpgrp():
                return False  # not a terminal, or we run in the background (SIGTTIN otherwise)
            self._tty = (fd, termios.tcgetattr(fd))
            tty.setcbreak(fd)
        except (OSError, termios.error):
            return False
        self.selector.register(fd, selectors.EVENT_READ, self._key)
        return True

    def _key(self, fd: int) -> None:
        try:
            data = os.read(fd, 64)
        except OSError:
            data = b""
        if not data:  # the terminal went away
            self.selector.unregister(fd)
            return
        for char in data.decode("utf-8", "replace").lower():
            action = KEYS.get(char)
            if char == "p":
                action = "heal" if self.actions.halves is not None else "partition"
            if char == "h":
                self.say(KEY_HELP)
            elif action is not None:
                try:
                    self.run(action, "terminal")
                except ActionError as exc:
                    self.say("cannot %s: %s" % (ACTIONS[action], exc))

    # -- the end ---------------------------------------------------------------------------

    def close(self) -> None:
        for client in list(self.clients):
            self._drop(client)
        if self.server is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.server)
            self.server.close()
            self.server = None
        if self._tty is not None:
            fd, saved = self._tty
            with contextlib.suppress(OSError, termios.error):
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            self._tty = None


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()
