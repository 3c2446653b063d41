"""Is a background process (an eval, a campaign's generation, an import) still there?

Background work records its pid in SQLite or a folder name; a pid that is gone means the work died.
"""
from __future__ import annotations

import os


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process holds that pid
    # A finished child of this process stays a zombie until reaped; reap it so it reads as gone.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True  # not our child: kill(0) succeeding is all we can know
