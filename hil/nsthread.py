"""Run calls in a thread that lives in another network namespace.

A virtual lab's gateway listens on the loopback of its own namespace, which the test process
cannot reach. Instead of a veth into the root namespace (the lab creates nothing there), one
worker thread joins the gateway's namespace with setns(2): sockets that thread creates belong
to that namespace, the rest of the process is untouched (setns applies to the calling thread).
Needs CAP_SYS_ADMIN, which building the lab needed anyway.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
CALL_TIMEOUT_S = 30.0  # bound on one call; the calls themselves carry their own timeouts

T = TypeVar("T")


class NamespaceError(OSError):
    """The namespace does not exist or could not be joined."""


class NamespaceThread:
    """``call(fn, *args)`` runs ``fn`` in a worker thread inside namespace ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netns-" + name)
        self._local = threading.local()

    def call(self, fn: Callable[..., T], *args: object) -> T:
        return self._pool.submit(self._in_namespace, fn, *args).result(CALL_TIMEOUT_S)

    def close(self) -> None:
        # The thread exits, so it no longer pins the namespace once the lab deletes it.
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _in_namespace(self, fn: Callable[..., T], *args: object) -> T:
        if not getattr(self._local, "entered", False):
            enter_namespace(self.name)
            self._local.entered = True
        return fn(*args)


def enter_namespace(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (as ``ip netns`` names it)."""
    path = os.path.join(NETNS_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise NamespaceError("network namespace %s: %s" % (name, exc.strerror)) from None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise NamespaceError("setns(%s): %s" % (name, os.strerror(errno)))
    finally:
        os.close(fd)
