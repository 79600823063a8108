"""Prune plans: how a packed repository's prune deletes packs while other hosts back up.

A prune holds the `prune` lock (volbackup.repo.locking), which backups' shared locks do
not conflict with. Before it deletes a pack it writes a **plan** `prune/<stamp>-<16 hex>.json`:
the packs it dooms and the index objects it supersedes. From then on every writer that
loads the index ignores the doomed packs' blobs (`doomed_packs`, read after the writer's
lock is written: a blob found only there is stored again). The prune then waits for the
shared locks that existed when the plan was written (`wait_for_locks`): only those runs
can have counted on a doomed blob. When they are gone, it checks the snapshots again,
keeps (**rescues**) a doomed pack a new snapshot needs, writes the **checked marker**
`prune/<same>.checked` naming the rescued packs, and deletes. A plan left by a killed
prune is finished by the next one. docs/design.md, "Prune with concurrent backups", has
the whole protocol and why it is enough.

Both objects are JSON with a MAC over them (HMAC-SHA256 with the authentication key, as
index objects; nothing in a plain repository): `<json>\\n<hex MAC>`. One that fails its
MAC is ignored by everyone and reported by prune (a writer without the key cannot make a
backup skip blobs, or a prune delete anything).
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from volbackup.errors import IntegrityError
from volbackup.repo import locking
from volbackup.repo.backends import Backend, BadEntry, BlobNotFound
from volbackup.repo.locking import LockInfo
from volbackup.timefmt import parse_utc_iso

PREFIX = "prune/"
PLAN_SUFFIX, CHECKED_SUFFIX = ".json", ".checked"
_NAME = re.compile(r"prune/(\d{8}T\d{6}Z-[0-9a-f]{16})(\.json|\.checked)")
PLAN_LABEL, CHECKED_LABEL = b"volbackup prune plan", b"volbackup prune checked"
MAX_BYTES = 64 << 20        # 64-hex pack ids: about a million doomed packs
VERSION = 1


@dataclass
class Plan:
    name: str                    # <stamp>-<16 hex>
    lock: str                    # the key of the prune lock that wrote it
    created: str
    doomed: list[str]            # pack ids (hex) to delete
    superseded: list[str]        # index object keys to delete before them
    rescued: list[str] | None = None   # from the checked marker: None until checked
    kept_index: list[str] | None = None  # index objects the check wrote (not deleted)

    @property
    def key(self) -> str:
        return f"{PREFIX}{self.name}{PLAN_SUFFIX}"

    @property
    def checked_key(self) -> str:
        return f"{PREFIX}{self.name}{CHECKED_SUFFIX}"

    @property
    def deleting(self) -> set[str]:
        """The packs to delete: the doomed, less the rescued."""
        return set(self.doomed) - set(self.rescued or ())


@dataclass
class Plans:
    plans: list[Plan] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # objects ignored, and why

    def doomed(self) -> frozenset[bytes]:
        """The packs a writer must not count on: doomed by a plan, and not rescued."""
        return frozenset(bytes.fromhex(p) for plan in self.plans for p in plan.deleting)


def new_name(now: datetime) -> str:
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(8)}"


def _seal(body: dict, label: bytes, mac: Callable[[bytes, bytes], bytes]) -> bytes:
    data = json.dumps(body, sort_keys=True).encode()
    return data + b"\n" + mac(label, data).hex().encode()


def _open(raw: bytes, label: bytes, mac: Callable[[bytes, bytes], bytes], where: str) -> dict:
    data, _, tag = raw.rpartition(b"\n")
    try:
        want = bytes.fromhex(tag.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise IntegrityError(f"{where} is not a prune object (no MAC line)") from None
    if not hmac.compare_digest(mac(label, data), want):
        raise IntegrityError(f"{where} is not authentic: its MAC does not match the "
                             f"repository key (forged, or altered): ignored")
    try:
        body = json.loads(data)
    except ValueError:
        raise IntegrityError(f"{where} is not JSON") from None
    if not isinstance(body, dict) or body.get("version") != VERSION:
        raise IntegrityError(f"{where} is of a version this volbackup does not read")
    return body


def _hex_list(body: dict, name: str, where: str, pattern: re.Pattern) -> list[str]:
    value = body.get(name)
    if not isinstance(value, list) or not all(isinstance(v, str) and pattern.fullmatch(v)
                                              for v in value):
        raise IntegrityError(f"{where}: its {name!r} is not a list of names")
    return value


_PACK_ID = re.compile(r"[0-9a-f]{64}")
_INDEX_KEY = re.compile(r"index/[0-9a-f]{64}")


def write_plan(backend: Backend, plan: Plan, mac: Callable[[bytes, bytes], bytes]) -> None:
    backend.write_bytes(plan.key, _seal(
        {"version": VERSION, "lock": plan.lock, "created": plan.created,
         "doomed": sorted(plan.doomed), "superseded": sorted(plan.superseded)},
        PLAN_LABEL, mac))


def write_checked(backend: Backend, plan: Plan, rescued: list[str], kept_index: list[str],
                  mac: Callable[[bytes, bytes], bytes]) -> None:
    """After the check: `rescued` stay, the rest of the doomed packs may go; the index
    objects in `kept_index` (written by the check) stay even if the plan supersedes one
    of the same name."""
    backend.write_bytes(plan.checked_key, _seal(
        {"version": VERSION, "plan": plan.name, "rescued": sorted(rescued),
         "kept_index": sorted(kept_index)}, CHECKED_LABEL, mac))
    plan.rescued, plan.kept_index = sorted(rescued), sorted(kept_index)


def read_plans(backend: Backend, mac: Callable[[bytes, bytes], bytes]) -> Plans:
    """Every plan under prune/ with its checked marker; an object that fails its checks
    is left out and named in `problems`."""
    found = Plans()
    names: dict[str, set[str]] = {}
    for info in backend.list(PREFIX):
        match = _NAME.fullmatch(info.key)
        if info.error or match is None:
            found.problems.append(info.error or f"{info.key} is not a prune plan (ignored)")
            continue
        names.setdefault(match[1], set()).add(match[2])
    for name in sorted(names):
        if PLAN_SUFFIX not in names[name]:
            continue        # a marker whose plan is gone: the plan was finished
        try:
            plan = _read_plan(backend, name, mac)
            if plan is None:
                continue
            if CHECKED_SUFFIX in names[name]:
                _read_checked(backend, plan, mac)
        except (IntegrityError, BadEntry) as e:
            found.problems.append(str(e))
            continue
        found.plans.append(plan)
    return found


def _read(backend: Backend, key: str) -> bytes | None:
    try:
        raw = backend.read_bytes(key, limit=MAX_BYTES)
    except BlobNotFound:
        return None     # finished by a prune since the listing
    if len(raw) > MAX_BYTES:
        raise IntegrityError(f"{key} is larger than a prune plan can be")
    return raw


def _read_plan(backend: Backend, name: str, mac) -> Plan | None:
    key = f"{PREFIX}{name}{PLAN_SUFFIX}"
    raw = _read(backend, key)
    if raw is None:
        return None
    where = f"prune plan {key}"
    body = _open(raw, PLAN_LABEL, mac, where)
    lock, created = body.get("lock"), body.get("created")
    if not isinstance(lock, str) or not isinstance(created, str):
        raise IntegrityError(f"{where}: no lock or time")
    return Plan(name, lock, created, _hex_list(body, "doomed", where, _PACK_ID),
                _hex_list(body, "superseded", where, _INDEX_KEY))


def _read_checked(backend: Backend, plan: Plan, mac) -> None:
    raw = _read(backend, plan.checked_key)
    if raw is None:
        return
    where = f"checked marker {plan.checked_key}"
    body = _open(raw, CHECKED_LABEL, mac, where)
    if body.get("plan") != plan.name:
        raise IntegrityError(f"{where} is not the marker of its plan")
    plan.rescued = _hex_list(body, "rescued", where, _PACK_ID)
    plan.kept_index = _hex_list(body, "kept_index", where, _INDEX_KEY)


def remove_plan(backend: Backend, plan: Plan) -> None:
    """The plan is done: its marker, then the plan (a marker without its plan is ignored)."""
    backend.delete(plan.checked_key)
    backend.delete(plan.key)


def oldest_lock(backend: Backend, mine: str) -> datetime | None:
    """When the oldest run that holds a lock now (but `mine`; stale ones do not count)
    started, by its own clock; None if none does. What such a run wrote and has not
    indexed yet is younger."""
    starts = []
    for lock in locking.list_locks(backend):
        if lock.key == mine or lock.stale_reason():
            continue
        try:
            starts.append(parse_utc_iso(lock.started))
        except ValueError:
            return datetime.min.replace(tzinfo=timezone.utc)   # unknown: as old as can be
    return min(starts, default=None)


@dataclass
class Waiting:
    """How prune waits for backups: up to `seconds`; `sleep` and `monotonic` are the
    clock (tests give a fake one), `on_break` hears of each stale lock broken."""

    seconds: float = 600.0
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    on_break: Callable[[LockInfo, str], None] = lambda lock, why: None


def wait_for_locks(backend: Backend, mine: str, waiting: Waiting) -> list[LockInfo]:
    """Wait until every lock that exists now (but `mine`) is released or stale (stale
    ones are broken, as `acquire` does); the locks still held when `waiting.seconds` are
    up (empty: all gone). Locks taken after this listing are not waited for: their runs
    have read the plan written before it."""
    deadline = waiting.monotonic() + waiting.seconds
    waited_for = {lock.key for lock in locking.list_locks(backend) if lock.key != mine}
    delay = 0.5
    while True:
        held = []
        for lock in locking.list_locks(backend):
            if lock.key not in waited_for:
                continue
            why = lock.stale_reason()
            if why:
                backend.delete(lock.key)
                waiting.on_break(lock, why)
            else:
                held.append(lock)
        left = deadline - waiting.monotonic()
        if not held or left <= 0:
            return held
        waiting.sleep(min(left, delay))
        delay = min(delay * 2, 5.0)
