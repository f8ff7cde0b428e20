"""FileWatch (runtime/monitor.py): inotify on a few directories, saying which of them changed
(the worker's exit watcher hands exactly those containers' exits on, before it reads the models)."""

import threading

from runtime.monitor import IN_CLOSE_WRITE, IN_MOVED_TO, FileWatch


def test_changed_names_the_directories_that_changed(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    with FileWatch([str(a), str(b), str(c)], IN_CLOSE_WRITE | IN_MOVED_TO) as watch:
        (a / "exit").write_text("0")
        (c / "tmp").write_text("1")
        (c / "tmp").rename(c / "exit")
        assert watch.changed(1.0) == {str(a), str(c)}
        assert watch.changed(0.05) == set()  # drained: nothing new


def test_changed_waits_for_the_event(tmp_path):
    with FileWatch([str(tmp_path)]) as watch:
        timer = threading.Timer(0.1, (tmp_path / "exit").write_text, ("3",))
        timer.start()
        try:
            assert watch.changed(5.0) == {str(tmp_path)}
        finally:
            timer.join()


def test_a_missing_path_is_skipped(tmp_path):
    with FileWatch([str(tmp_path / "not-yet"), str(tmp_path)]) as watch:
        (tmp_path / "exit").write_text("0")
        assert watch.changed(1.0) == {str(tmp_path)}
        assert watch.wait(0.01) is False


def _closed_soon(fd: int) -> bool:
    import os
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/self/fd/{fd}"):
            return True
        time.sleep(0.01)
    return False


def test_close_leaves_the_descriptor_to_a_thread_that_closes_it(tmp_path):
    """Closing an inotify descriptor can wait for a kernel grace period: close() hands it to a
    thread, which closes it (in a forked child too: a Celery pool process has no such thread)."""
    import os

    watch = FileWatch([str(tmp_path)])
    fd = watch.fd
    watch.close()
    assert watch.fd == -1 and _closed_soon(fd)

    watch = FileWatch([str(tmp_path)])  # the parent's thread exists now; the child has none
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        child = FileWatch([str(tmp_path)])
        child_fd = child.fd
        child.close()
        os._exit(0 if _closed_soon(child_fd) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    watch.close()


def test_add_watches_one_more_path_and_a_deleted_one_is_dropped(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    with FileWatch([str(a)]) as watch:
        assert watch.add(str(b)) is True
        assert watch.add(str(tmp_path / "missing")) is False
        (b / "exit").write_text("0")
        assert watch.changed(1.0) == {str(b)}
        (b / "exit").unlink()
        b.rmdir()  # its watch ends (IN_IGNORED): not a change of anything watched
        assert watch.changed(0.2) == set()
        assert str(b) not in watch._paths.values()
        (a / "exit").write_text("1")
        assert watch.changed(1.0) == {str(a)}
