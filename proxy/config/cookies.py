"""`[cookies]` of a route or of `[defaults]`: the edits made to every `Set-Cookie`.

Only modes `set` and `pass` exist: a cookie table adds or replaces attributes, it owns no header
of its own to remove or default. A key left out changes nothing.
"""
from __future__ import annotations

from proxy.config.reading import Table
from proxy.model import CookiePolicy

COOKIE_KEYS = ("mode", "samesite", "secure", "domain", "partitioned")
COOKIE_MODES = ("set", "pass")
SAMESITE = {"none": "None", "lax": "Lax", "strict": "Strict"}  # as written -> as sent


def cookie_policy(table: Table) -> CookiePolicy | None:
    """The compiled table; None for `mode = "pass"` or when it has errors."""
    errors_before = len(table.report.errors)
    mode = table.choice("mode", COOKIE_MODES, "set")
    samesite = table.choice("samesite", tuple(SAMESITE), None)
    secure = table.boolean("secure", False)
    domain = table.choice("domain", ("strip", "keep"), "keep")
    partitioned = table.boolean("partitioned", False)
    # Browsers reject a `SameSite=None` cookie without `Secure` (RFC 6265bis §5.6 step 15), and
    # a `Partitioned` one without `Secure` (CHIPS §2.1): the edit would make the cookie vanish.
    if not secure:
        if samesite == "none":
            table.error("samesite", 'samesite = "none" needs secure = true in the same table: '
                                    "browsers reject SameSite=None cookies that are not Secure")
        if partitioned:
            table.error("partitioned", "partitioned = true needs secure = true in the same table: "
                                       "browsers reject Partitioned cookies that are not Secure")
    if mode != "set" or len(table.report.errors) > errors_before:
        return None
    return CookiePolicy(
        samesite=SAMESITE[samesite] if samesite else None,
        secure=bool(secure),
        domain_strip=domain == "strip",
        partitioned=bool(partitioned),
    )
