"""The sans-IO election core and node application, shared by the Pi agent, the ESP32 firmware
and the simulator.

Everything under this folder runs unchanged on CPython and MicroPython: no I/O, no clock
(time is passed in as integer milliseconds), no dict-order reliance, no floats in decisions.
See docs/design.md.
"""
