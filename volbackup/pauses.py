"""A test hook: stop a process at a named step, so that a test can kill it exactly there.

With `VOLBACKUP_PAUSE_AT=STEP[,STEP...]` and `VOLBACKUP_PAUSE_FILE=PATH` in its
environment, a process that reaches `pause("STEP")` writes STEP into PATH, then waits
while PATH exists (the test kills it there with SIGKILL, or removes PATH to let it go on
to the next step named). Without both
variables `pause` does nothing. The steps are named where they are called (prune's plan,
the backup's index load and manifest: docs/design.md, "Prune with concurrent backups").
"""

from __future__ import annotations

import os
import time

STEP_ENV, FILE_ENV = "VOLBACKUP_PAUSE_AT", "VOLBACKUP_PAUSE_FILE"


def pause(step: str) -> None:
    if step not in os.environ.get(STEP_ENV, "").split(",") or not os.environ.get(FILE_ENV):
        return
    path = os.environ[FILE_ENV]
    with open(path, "w") as out:
        out.write(step)
    while os.path.exists(path):
        time.sleep(0.02)
