"""Named fault-injection points, for the fault suite (``tests/faults/``) and for operators rehearsing failures.

A party calls :func:`failpoint` at the moments a crash matters most (a node after reserving, after
preparing its answer, after committing; the coordinator mid-query, after deciding to commit). Unless
the environment variable ``FEDLINK_FAILPOINTS`` names that point, the call does nothing. With
``FEDLINK_FAILPOINTS="node.commit=kill"`` the process kills itself there (``SIGKILL``: no clean-up,
as a power cut), with ``=stop`` it stops itself (``SIGSTOP``: a stall, until someone sends
``SIGCONT``). Several points are separated by commas; ``name@party=action`` limits a point to one
party (``node.prepare@nhs=stop``). Each point fires once per process, so a stalled process that is
continued carries on normally.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger("fedlink.faults")
ENV = "FEDLINK_FAILPOINTS"
_ACTIONS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}
_fired: set[str] = set()
_guard = threading.Lock()


def failpoint(name: str, party: str = "") -> None:
    """Crash or stall here if ``FEDLINK_FAILPOINTS`` asks for it (see the module's doc); else nothing."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    for item in spec.split(","):
        point, _, action = item.strip().partition("=")
        where, _, only = point.partition("@")
        if where != name or (only and only != party) or action not in _ACTIONS:
            continue
        with _guard:
            if point in _fired:
                return
            _fired.add(point)
        log.warning("failpoint %s: %s", point, action)
        # Sent to this thread, not the process: a process-directed signal is taken by whichever thread the
        # kernel picks (the main one first), and until that thread runs, this one carries on; under load it
        # got as far as answering the coordinator before the stall began. A stop or kill delivered to this
        # thread takes effect before the call returns, and still stops or kills the whole process.
        signal.pthread_kill(threading.get_ident(), _ACTIONS[action])
        return
