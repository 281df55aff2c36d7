"""The fixed half of an over-the-air update: the switch to a staged app, and the rollback.

main.py (``start.py``) runs ``boot()`` before it imports the app, only when ``ota.json``
exists. This module is not in an update bundle (nor are boot.py, main.py and start.py): a broken bundle cannot break the
way back. The bundle's half (fetch, verify, stage, trial, commit) is ``app/ota.py``.

``ota.json`` holds the update state; its ``state`` drives what a boot does:

- ``pending``: ``app.new/`` holds a verified app. Each of its folders (``dirs``) replaces the
  running one, which moves to ``app.old/``; then ``trial``. Every step can be redone, so a
  power cut during the switch is finished at the next boot.
- ``trial``: the app before this boot was on trial and did not commit (it crashed, hung until
  the watchdog fired, or reset itself when it did not join its mesh in time): the folders of
  ``app.old/`` come back (those that did not exist before, on an image with the app frozen
  in, are removed), ``rolled-back``.
- ``downloading`` or ``verifying``: a reset cut an update short: ``failed``, the app as it was.

On an ESP32 a one-shot hardware timer resets the board at the end of the trial unless the
new app commits first (``app/ota.py`` stops it), so even an app that never reaches its own
check goes back.
"""

import json
import os

STATE = "ota.json"
NEW = "app.new"
OLD = "app.old"


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def rmtree(path):
    """Remove a file or a folder and everything in it (nothing if it is not there)."""
    try:
        mode = os.stat(path)[0]
    except OSError:
        return
    if mode & 0x4000:
        for name in os.listdir(path):
            rmtree(path + "/" + name)
        os.rmdir(path)
    else:
        os.remove(path)


def read():
    try:
        with open(STATE) as f:
            state = json.load(f)
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def write(state):
    """Atomically: a power cut leaves the old or the new state, never half of one."""
    with open(STATE + ".tmp", "w") as f:
        json.dump(state, f)
    os.rename(STATE + ".tmp", STATE)


def switch(state):
    for name in state["dirs"]:
        if exists(NEW + "/" + name):
            if exists(name) and not exists(OLD + "/" + name):
                os.rename(name, OLD + "/" + name)
            rmtree(name)  # (a leftover of an earlier cut switch)
            os.rename(NEW + "/" + name, name)
    rmtree(NEW)
    state["state"] = "trial"
    state.pop("reason", None)
    write(state)
    print("ota: trying %s" % state.get("new"))


def rollback(state):
    had = state.get("had", ())
    for name in state["dirs"]:
        if exists(OLD + "/" + name):
            rmtree(name)
            os.rename(OLD + "/" + name, name)
        elif name not in had:
            rmtree(name)  # the image's frozen copy runs again
    rmtree(OLD)
    state["state"] = "rolled-back"
    state["reason"] = state.get("reason") or "no commit"  # or why the app gave up
    write(state)
    print("ota: %s did not commit: back to %s" % (state.get("new"), state.get("version")))


def arm(ms):
    """The hard end of a trial on a board: a reset, unless the app commits (``disarm``)."""
    try:
        import machine  # type: ignore[import-not-found]

        machine.Timer(0).init(
            mode=machine.Timer.ONE_SHOT, period=ms, callback=lambda t: machine.reset()
        )
    except (ImportError, AttributeError, ValueError, OSError):
        pass  # the unix port: the runtime's own check (app/ota.py) ends the trial


def boot():
    state = read()
    what = state.get("state")
    try:
        if what == "pending":
            switch(state)
            arm(int(state.get("trial_ms", 120000)) + 30000)
        elif what == "trial":
            rollback(state)
        elif what in ("downloading", "verifying"):
            rmtree(NEW)
            state["state"] = "failed"
            state["reason"] = "interrupted"
            write(state)
    except (OSError, KeyError, TypeError) as e:
        print("ota: boot step failed: %r" % (e,))
