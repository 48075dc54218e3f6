"""Shadow CORS policies (`[routes.cors.shadow]`): how a candidate table would decide a request.

The candidate is decided by `proxy.policy.decide`, the function that decides the live table, on
the same `RequestInfo`; the result is logged and counted, never applied. Pure: the server and
`coxp explain` both call `shadow_decision`.
"""
from __future__ import annotations

from typing import Final

from proxy.model import Route
from proxy.policy import Decision, RequestInfo, decide

# A credentialed response without `Access-Control-Allow-Credentials: true` fails the browser's
# CORS check (Fetch §4.10 "CORS check", step 7): the page never sees it.
REASON_CREDENTIALS: Final = "credentials-not-allowed"


def shadow_decision(route: Route, info: RequestInfo, websocket: bool = False) -> Decision | None:
    """The candidate table's decision for the request, or None when the route has none.

    `decide` classifies by origin, method and headers only: the response it allows carries
    credentials or not as configured. So a candidate that turns credentials off where the live
    table has them on would break credentialed callers that `decide` still calls `allowed`; for
    such a request (one carrying `Cookie` or `Authorization`) the candidate's outcome is `denied`
    with reason `credentials-not-allowed`, which is what the browser would make of it.
    """
    candidate = route.shadow
    if candidate is None:
        return None
    decision = decide(candidate, info, websocket)
    live = route.policies.cors
    shadow = candidate.policies.cors
    if (decision.cors == "allowed" and info.credentials and live is not None and live.allow_credentials
            and shadow is not None and not shadow.allow_credentials):
        return decision._replace(cors="denied", reason=REASON_CREDENTIALS)
    return decision
