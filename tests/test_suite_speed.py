"""The fast subset stays fast: a test that runs over the limit without the ``slow`` mark fails the session
and is listed with its time (the check lives in ``tests/conftest.py``)."""

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

        def test_dawdles():
            time.sleep(0.4)

        @pytest.mark.slow
        def test_marked():
            time.sleep(0.4)
        """
    )
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n    slurm: slurm\n")
    monkeypatch.setenv("ATTN_SLOW_LIMIT_S", "0.2")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*tests over 0.2 s not marked slow*", "*s  test_timing.py::test_dawdles"])
    assert "test_marked" not in "\n".join(line for line in result.outlines if " s  " in line)
    result.assert_outcomes(passed=3)
    monkeypatch.setenv("ATTN_SLOW_LIMIT_S", "5")
    assert pytester.runpytest_subprocess("-p", "no:cacheprovider").ret == 0
