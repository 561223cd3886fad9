"""The machine's apt sources, parsed (deb822 and one-line); fabricated hosts only."""

from __future__ import annotations

import pytest

from sim.oracle.apt import (
    debian_archive,
    one_line,
    parse_deb822,
    parse_one_line,
    parse_stanzas,
    read_sources,
)
from sim.oracle.errors import OracleSetupError

from .conftest import ARCHIVE, SECURITY

DEB822 = f"""\
# the machine's Debian
Types: deb deb-src
URIs: {ARCHIVE}/
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://src-only.invalid/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://disabled.invalid/debian
Suites: trixie
Components: main
Enabled: no

Types: deb
URIs: {SECURITY}
Suites: bookworm-security
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBF...
 -----END PGP PUBLIC KEY BLOCK-----
"""

ONE_LINE = f"""\
# comment
deb-src {ARCHIVE} bookworm main
deb [arch=amd64,arm64 signed-by=/usr/share/keyrings/k.gpg] {ARCHIVE} bookworm main # tail
deb http://vendor.invalid/apt cloud-sdk main
deb {SECURITY} bookworm-security main non-free-firmware
"""


def test_deb822_types_enabled_and_inline_keys():
    sources = parse_deb822(DEB822, "debian.sources")
    assert [s.uris for s in sources] == [(f"{ARCHIVE}/",), (SECURITY,)]
    main, security = sources
    assert main.suites == ("bookworm", "bookworm-updates")
    assert main.components == ("main", "contrib")
    assert main.signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"
    assert security.signed_by is None  # an inline key block is not a keyring path
    assert main.is_debian and not main.is_security
    assert security.is_debian and security.is_security


def test_one_line_options_comments_and_vendor_repositories():
    sources = parse_one_line(ONE_LINE, "sources.list")
    assert [(s.uris[0], s.suites, s.signed_by) for s in sources] == [
        (ARCHIVE, ("bookworm",), "/usr/share/keyrings/k.gpg"),
        ("http://vendor.invalid/apt", ("cloud-sdk",), None),
        (SECURITY, ("bookworm-security",), None),
    ]
    assert sources[0].components == ("main",)
    assert not sources[1].is_debian  # a vendor's suite is not Debian's


def test_read_sources_reads_both_formats_and_ignores_other_files(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(ONE_LINE)
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    (tmp_path / "sources.list.d" / "x.list.disabled").write_text(f"deb {ARCHIVE} sid main\n")
    sources = read_sources(tmp_path)
    assert len(sources) == 5
    assert all("sid" not in s.suites for s in sources)


def test_debian_archive_takes_main_and_security_from_the_configuration():
    archive = debian_archive(parse_one_line(ONE_LINE))
    assert archive.uri == ARCHIVE
    assert archive.signed_by == "/usr/share/keyrings/k.gpg"
    assert archive.security_uri == SECURITY
    archive = debian_archive(parse_deb822(DEB822))
    assert archive.uri == ARCHIVE  # trailing slash dropped


def test_debian_archive_missing_is_a_clear_error():
    with pytest.raises(OracleSetupError, match="no Debian archive in the apt configuration"):
        debian_archive(parse_one_line("deb http://vendor.invalid/apt cloud-sdk main\n"), "/x")


def test_private_source_line_is_arm64_and_keeps_the_keyring():
    assert one_line(ARCHIVE, "trixie-backports", "main", "/k.gpg") == (
        f"deb [arch=arm64 signed-by=/k.gpg] {ARCHIVE} trixie-backports main"
    )
    assert (
        one_line(ARCHIVE, "bookworm", "main", None) == f"deb [arch=arm64] {ARCHIVE} bookworm main"
    )


def test_apt_cache_show_stanzas():
    text = (
        "Package: a\nVersion: 1.0-1\nDescription: x\n more text: with a colon\n\n"
        "Package: a\nVersion: 1.1-1\n\nNot-A-Stanza: y\n"
    )
    assert parse_stanzas(text) == [
        {"Package": "a", "Version": "1.0-1", "Description": "x"},
        {"Package": "a", "Version": "1.1-1"},
    ]
