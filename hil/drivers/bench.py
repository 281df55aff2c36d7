"""``VirtualBenchDriver``: builds a ``VirtualBench`` (``hil.bench.Bench``) when activated and
removes it when deactivated, as labgrid's QEMUDriver makes its virtual machine.

Board slots, the gateway and the broker of a local virtual environment name this driver's
target (``bench: bench``); activating any of them activates this driver first.
"""

from __future__ import annotations

import shlex
from typing import Any, ClassVar

import attr
from labgrid.driver.common import Driver
from labgrid.factory import target_factory

from hil.bench import Bench, BenchError
from hil.drivers.common import HilError, wait_until, workdir
from hil.nsthread import NamespaceThread

GATEWAY_START_S = 20.0


@target_factory.reg_driver
@attr.s(eq=False)
class VirtualBenchDriver(Driver):
    bindings: ClassVar[dict[str, Any]] = {"spec": "VirtualBench"}

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._bench: Bench | None = None

    @property
    def bench(self) -> Bench:
        if self._bench is None:
            raise HilError("virtual bench %s is not built (activate its driver)" % self.target.name)
        return self._bench

    def on_activate(self) -> None:
        spec: Any = self.spec
        try:
            args = tuple(shlex.split(spec.gateway_args))
            bench = Bench.from_spec(workdir(self.target) / self.target.name, spec, args)
            bench.open()
        except (BenchError, ValueError) as exc:
            raise HilError("bench %s: %s" % (self.target.name, exc)) from None
        self._bench = bench
        try:
            self._wait_gateway(bench)
        except BaseException:
            self.on_deactivate()
            raise

    def on_deactivate(self) -> None:
        if self._bench is not None:
            self._bench.close()
            self._bench = None

    def _wait_gateway(self, bench: Bench) -> None:
        from hil.drivers.gateway import get_json

        thread = NamespaceThread(bench.gateway_netns)
        try:

            def healthy() -> bool:
                try:
                    return thread.call(get_json, bench.gateway_url + "/healthz") is not None
                except HilError:
                    return False

            try:
                wait_until(healthy, GATEWAY_START_S, "the bench's gateway to answer")
            except HilError as exc:
                raise HilError("%s; gateway log:\n%s" % (exc, bench.gateway_log_tail())) from None
        finally:
            thread.close()
