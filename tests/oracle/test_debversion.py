"""Debian version ordering, as dpkg --compare-versions orders them."""

import shutil
import subprocess

import pytest

from sim.oracle.debversion import compare, upstream

PAIRS = [  # a < b
    ("7.3.4-1~bpo13+1", "7.3.4-1"),
    ("7.3.4-1~bpo13+1", "7.3.10-1~bpo13+1"),
    ("6.1.158-1", "6.1.192-3"),
    ("6.1.0-9", "6.1.0-57"),
    ("1.0~rc1", "1.0"),
    ("1.0", "1.0a"),
    ("1.0", "1.0-1"),
    ("2.0", "1:1.0"),
    ("1.35.0-4+b1", "1.35.0-4+deb12u1+b1"),
]


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_order(a, b):
    assert compare(a, b) < 0
    assert compare(b, a) > 0
    assert compare(a, a) == 0


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="no dpkg to agree with")
@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_agrees_with_dpkg(a, b):
    assert subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0


def test_upstream_part():
    assert upstream("7.3.4-1~bpo13+1") == "7.3.4"
    assert upstream("6.1.192-3") == "6.1.192"
    assert upstream("1:1.35.0-4+deb12u1+b1") == "1.35.0"
