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
