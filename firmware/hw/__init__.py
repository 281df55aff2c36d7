"""Hardware layers: ``esp32`` for the board, ``unix`` for the MicroPython unix port
(``app.config.boot`` builds the one ``hw.kind`` names).

Both expose the same small surface (see ``unix.Hardware``): ``power(now)`` ->
(battery per-mille, link per-mille, mains), ``sample(now)`` -> {metric: int milli-units},
``wall_s()`` (the wall clock in Unix seconds), ``rebase(ms)`` (the runtime's clock went
back by ``ms``), ``ip()``, ``maintain(now)`` (keep Wi-Fi up
and the clock set), ``feed()`` (watchdog), ``show(state, now)``
(LED), ``close()``.
"""
