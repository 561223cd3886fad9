"""share-guest-keeps-shared: an enlightened guest that never unshares an ITT page.

Like the built-in share-enlightened-guest, the guest MEM_SHAREs every page holding an
ITT when it allocates the ITT; unlike it, the guest never MEM_UNSHAREs one (a guest
that saves the hypercalls, or a driver that forgets). A page stays shared after its
last ITT is freed, and so does whatever the kernel puts there next: fewer hypercalls,
more exposure wherever devices come and go.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

from sim.proposals.share_enlightened_guest import ShareEnlightenedGuest

if TYPE_CHECKING:
    from sim.actors.guest import Guest


class ShareGuestKeepsShared(ShareEnlightenedGuest):
    name = "share-guest-keeps-shared"
    summary = "the guest shares its ITT pages and never unshares them (example plugin)"

    def on_itt_free(self, guest: Guest, addr: int, size: int) -> Generator:
        yield from ()  # the page stays shared, whatever is allocated on it next
