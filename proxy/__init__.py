"""coxp: a reverse proxy that owns the cross-origin policy headers (CORS, CORP, COOP, COEP) per route."""

__version__ = "0.1.0"
