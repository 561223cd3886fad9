"""Debian version ordering (deb-version(7)): epoch, upstream version, Debian revision."""

from __future__ import annotations

import re
from functools import cmp_to_key


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    """dpkg's verrevcmp: alternate non-digit runs (with ~ lowest) and numeric runs."""
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _split(v: str) -> tuple[int, str, str]:
    m = re.fullmatch(r"(?:(\d+):)?(.+?)(?:-([^-]+))?", v.strip())
    if m is None:
        raise ValueError(f"not a Debian version: {v!r}")
    return int(m.group(1) or 0), m.group(2), m.group(3) or ""


def compare(a: str, b: str) -> int:
    """<0, 0, >0 as ``dpkg --compare-versions a lt/eq/gt b``."""
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    if ea != eb:
        return ea - eb
    return _compare_part(ua, ub) or _compare_part(ra, rb)


sort_key = cmp_to_key(compare)


def upstream(v: str) -> str:
    """The upstream part: ``7.3.4-1~bpo13+1`` -> ``7.3.4``."""
    return _split(v)[1]
