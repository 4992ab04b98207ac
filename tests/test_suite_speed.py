"""The fast subset stays fast: a test without the ``slow`` mark that works (CPU time) over the limit, or waits
three times that, fails the session and is listed with its times (the check lives in tests/conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path


def test_an_unmarked_slow_test_fails_the_session_and_is_listed(pytester, monkeypatch):
    shutil.copy(Path(__file__).with_name("conftest.py"), pytester.path / "conftest.py")
    pytester.makepyfile(
        test_timing="""
        import time
        import pytest

        def test_quick():
            pass

        def work(seconds):
            start = time.process_time()
            while time.process_time() - start < seconds:
                pass

        def test_works():
            work(0.4)

        def test_waits_a_little():
            time.sleep(0.4)

        def test_waits_long():
            time.sleep(0.7)

        @pytest.mark.slow
        def test_marked():
            work(0.4)
        """
    )
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n    slurm: slurm\n")
    monkeypatch.setenv("ATTN_SLOW_LIMIT_S", "0.2")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        ["*tests over 0.2 s of CPU (or 0.6 s of wall time) not marked slow*", "*test_timing.py::test_works"]
    )
    listed = "\n".join(line for line in result.outlines if " s wall  " in line)
    assert "test_waits_long" in listed and "test_waits_a_little" not in listed and "test_marked" not in listed
    result.assert_outcomes(passed=5)
    monkeypatch.setenv("ATTN_SLOW_LIMIT_S", "5")
    assert pytester.runpytest_subprocess("-p", "no:cacheprovider").ret == 0
