"""The unix port's stand-in for a board's deep sleep and RTC memory (``hw/esp32.py`` has the
real ones): ``app/sleep.py`` loads it for a sleepy member only, so its code and names cost
every other node nothing (firmware/README.md, "Memory").

``hw.rtc_file`` (default ``rtc_memory``) stands in for the RTC memory a deep sleep keeps, and
``deepsleep`` ends the process with status 4 (3 is a reset the app asked for): whoever ran it
starts it again after the interval, as the RTC timer wakes a board.
"""

import os
import sys


class Rtc:
    def __init__(self, cfg):
        self.file = (cfg.get("hw") or {}).get("rtc_file", "rtc_memory")

    def kept(self):
        """What the last deep sleep kept (RTC memory), or None."""
        try:
            with open(self.file, "rb") as f:
                return f.read()
        except OSError:
            return None

    def keep(self, data):
        with open(self.file + ".tmp", "wb") as f:
            f.write(data)
        os.rename(self.file + ".tmp", self.file)

    def deepsleep(self, ms):
        sys.exit(4)  # the caller starts us again after ``ms``
