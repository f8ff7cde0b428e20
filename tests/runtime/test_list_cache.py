"""ContainerStore.list()'s cache of parsed records, and summaries(): never a stale state.

list() gives again a record parsed before while its config.json keeps the same (inode, mtime, size),
and only remembers files written over LISTED_MIN_AGE_NS ago. These tests set that age to -1 (every
record is remembered at once), the harshest case: an exit or a record write must still show.
"""

import os
import signal
import time

import pytest

from runtime.state import ContainerState

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root")

S = ContainerState
ENGINE_DIR_PREFIX = "bt-lc-"


@pytest.fixture
def remember_all(store, monkeypatch):
    monkeypatch.setattr(store, "LISTED_MIN_AGE_NS", -1)
    return store


def listed(store, cid):
    return next(r for r in store.list(all=True) if r.id == cid)


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_an_exit_shows_though_the_running_record_was_remembered(remember_all, ctr):
    store = remember_all
    record = ctr("sh", "-c", "read x; exit 7", open_stdin=True)
    assert listed(store, record.id).state is S.RUNNING
    assert listed(store, record.id).state is S.RUNNING
    assert record.id in store._listed  # the second list was served from the cache
    # The exit happens behind the store's back: only conmon's exit file says so.
    os.kill(record.pid, signal.SIGKILL)
    wait_for(lambda: os.path.exists(store._exit_file(record.id)))
    after = listed(store, record.id)
    assert after.state is S.EXITED and after.exit_code == 137
    assert listed(store, record.id).state is S.EXITED
    shared = next(r for r in store.list(all=True, shared=True) if r.id == record.id)
    assert shared.state is S.EXITED and shared.exit_code == 137
    assert store.summaries([after])[0]["State"] == "exited"
    assert store.summaries([after])[0]["Status"].startswith("Exited (137)")


def test_a_record_write_shows_at_once(remember_all, ctr):
    store = remember_all
    record = ctr("sleep", "30", start=False)
    assert listed(store, record.id).state is S.CONFIGURED
    store.rename(record.id, f"renamed-{record.id[:8]}")
    assert listed(store, record.id).name == f"renamed-{record.id[:8]}"
    store.start(record.id)
    assert listed(store, record.id).state is S.RUNNING
    store.kill(record.id)
    store.wait(record.id, timeout=10)
    assert listed(store, record.id).state is S.EXITED


def test_shared_records_show_an_exit(remember_all, ctr):
    # docker ps's path: the remembered records themselves, not copies.
    store = remember_all
    record = ctr("sh", "-c", "read x; exit 5", open_stdin=True)
    for _ in range(2):
        assert next(r for r in store.list(all=True, shared=True) if r.id == record.id).state is S.RUNNING
    os.kill(record.pid, signal.SIGKILL)
    wait_for(lambda: os.path.exists(store._exit_file(record.id)))
    after = next(r for r in store.list(all=True, shared=True) if r.id == record.id)
    assert after.state is S.EXITED and after.exit_code == 137


def test_a_fresh_record_is_not_remembered(store, ctr):
    # The default: a config.json written less than a second ago is parsed again every time.
    record = ctr(start=False)
    listed(store, record.id)
    assert record.id not in store._listed


def test_a_removed_container_leaves_the_cache(remember_all, ctr):
    store = remember_all
    record = ctr(start=False)
    listed(store, record.id)
    assert record.id in store._listed
    store.remove(record.id)
    assert record.id not in {r.id for r in store.list(all=True)}
    assert record.id not in store._listed


def test_listed_records_are_copies(remember_all, ctr):
    store = remember_all
    record = ctr(start=False, labels={"a": "1"})
    first = listed(store, record.id)
    first.state = S.DEAD
    first.name = "changed"
    first.config.labels["a"] = "2"
    first.config.env.append("X=1")
    first.args.append("more")
    again = listed(store, record.id)
    assert again.state is S.CONFIGURED and again.name == record.name
    assert again.config.labels == {"a": "1"} and "X=1" not in again.config.env
    assert again.args == record.args


def test_summaries_are_the_summaries_one_by_one(store, ctr):
    made = [ctr(start=False), ctr("sleep", "30"), ctr("true", network_mode="none")]
    store.wait(made[2].id, timeout=10)
    records = [r for r in store.list(all=True) if r.id in {m.id for m in made}]
    assert len(records) == 3
    batch = store.summaries(records)
    single = [store.summary(r) for r in records]
    for b, s in zip(batch, single):
        b.pop("Status"), s.pop("Status")
    assert batch == single


def test_names_are_checked_against_remembered_records(remember_all, ctr):
    """create's name check and a lookup by name read list()'s remembered records: a rename
    shows at once, in both."""
    from runtime.errors import AlreadyExists

    store = remember_all
    first = ctr("true", start=False, name="lc-first")
    store.list(all=True)  # remembered now
    with pytest.raises(AlreadyExists, match='"/lc-first" is already in use'):
        ctr("true", start=False, name="lc-first")
    store.rename(first.id, "lc-renamed")
    assert store.get("lc-renamed").id == first.id
    second = ctr("true", start=False, name="lc-first")  # the old name is free again
    assert store.get("lc-first").id == second.id
