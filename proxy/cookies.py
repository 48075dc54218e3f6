"""`[cookies]`: the edits made to a `Set-Cookie` value, as a pure function.

A cross-site credentialed request only carries cookies marked `SameSite=None; Secure`
(RFC 6265bis §5.6.7.1 "same-site" enforcement; Chromium and Firefox treat a cookie without
SameSite as `Lax`), and a cookie whose `Domain` names the backend's own host is refused by the
browser that called the proxy's host (RFC 6265 §5.3 step 6). Legacy backends set neither, so
coxp edits their `Set-Cookie` lines: only the attributes the table names change; the cookie's
name and value, `Path`, `Expires`, `Max-Age`, `HttpOnly` and unknown attributes are kept as sent.
"""
from __future__ import annotations

from proxy.model import CookiePolicy, ValueRewrite
from proxy.standards import OWS

__all__ = ["cookie_rewrite", "edit_set_cookie"]


def _attribute_name(attribute: str) -> str:
    """RFC 6265 §5.2: the attribute name is what precedes the first "=", trimmed; case-insensitive."""
    return attribute.partition("=")[0].strip(OWS).lower()


def edit_set_cookie(value: str, policy: CookiePolicy) -> str | None:
    """The `Set-Cookie` value with `policy` applied, or None when nothing had to change.

    RFC 6265 §5.2: the cookie-pair is everything before the first ";" (kept byte for byte);
    the attributes follow, separated by ";". A replaced `SameSite` keeps its place; added
    attributes go at the end."""
    pair, _, rest = value.partition(";")
    attributes = [a.strip(OWS) for a in rest.split(";")] if rest else []
    out: list[str] = []
    changed = False
    samesite_written = False
    present: set[str] = set()
    for attribute in attributes:
        if not attribute:
            continue
        name = _attribute_name(attribute)
        present.add(name)
        if name == "domain" and policy.domain_strip:
            changed = True
            continue
        if name == "samesite" and policy.samesite is not None:
            wanted = f"SameSite={policy.samesite}"
            if samesite_written or attribute != wanted:
                changed = True
            if samesite_written:
                continue  # RFC 6265 §5.3: the last one would win; one is left
            attribute, samesite_written = wanted, True
        out.append(attribute)
    if policy.samesite is not None and not samesite_written:
        out.append(f"SameSite={policy.samesite}")
        changed = True
    for wanted, flag in (("Secure", policy.secure), ("Partitioned", policy.partitioned)):
        if flag and wanted.lower() not in present:
            out.append(wanted)
            changed = True
    if not changed:
        return None
    return "; ".join([pair, *out])


def cookie_rewrite(policy: CookiePolicy) -> ValueRewrite:
    """The value edit of a route's `Set-Cookie` lines (`proxy.policy.apply_edits` runs it)."""

    def rewrite(name: str, value: str, own_origin: str | None) -> str | None:
        return edit_set_cookie(value, policy)

    return rewrite
