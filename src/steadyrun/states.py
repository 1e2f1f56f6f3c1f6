"""The state machines of tasks and attempts, in one place.

Every state change the engine (or ``resume``) makes goes through :func:`transition`,
which raises :class:`~steadyrun.errors.InvalidTransition` for anything not listed here.

State machines (enforced by :func:`transition`; anything else raises
:class:`~steadyrun.errors.InvalidTransition`):

========== ============================================= ==============================
task       may become                                    when
========== ============================================= ==============================
pending    running                                       deps succeeded, request fits
pending    skipped                                       a dependency failed for good
pending    cancelled                                     the experiment was cancelled
retrying   running                                       its backoff delay has passed
retrying   cancelled                                     the experiment was cancelled
running    succeeded                                     the attempt succeeded
running    retrying                                      failed; the policy retries it
running    failed                                        failed; no retry is left
running    cancelled                                     the attempt was cancelled
failed,    pending                                       ``resume`` reopens the task
cancelled,
skipped
========== ============================================= ==============================

An attempt is ``running`` from the moment it is recorded (just before launch) until it
becomes ``succeeded``, ``failed`` (with a kind: error, oom, timeout, lost) or
``cancelled``; those three are final.
"""

from __future__ import annotations

from steadyrun.errors import InvalidTransition

TASK_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"running", "skipped", "cancelled"}),
    "retrying": frozenset({"running", "cancelled"}),
    "running": frozenset({"succeeded", "retrying", "failed", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset({"pending"}),
    "cancelled": frozenset({"pending"}),
    "skipped": frozenset({"pending"}),
}
ATTEMPT_TRANSITIONS: dict[str, frozenset[str]] = {
    "running": frozenset({"succeeded", "failed", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
FINAL_TASK_STATES = frozenset({"succeeded", "failed", "cancelled", "skipped"})


def transition(table: dict[str, frozenset[str]], what: str, old: str, new: str) -> str:
    """Return ``new`` if ``old -> new`` is allowed in ``table``, else raise."""
    if new not in table.get(old, frozenset()):
        raise InvalidTransition(f"{what}: {old} -> {new} is not an allowed state change")
    return new
