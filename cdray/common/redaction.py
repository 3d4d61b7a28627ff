"""Credentials out of every message: user:password and secret query values of URIs, masked."""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# query parameters whose values are secrets: *key*, *secret*, *token*, *password*, *credential*,
# *signature* (X-Amz-Signature), *auth*, and a bare `sig` (Azure SAS)
_SECRET_PARAM = re.compile(r"(?i)([?&](?:[^=&#\s]*(?:key|secret|token|passw|credential|signature|auth)"
                           r"[^=&#\s]*|sig)=)[^&#\s'\"]*")
# a URI inside free text: scheme://, then anything up to whitespace or a quote
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def without_userinfo(uri: str, mark: str = "") -> str:
    """The URI with its user:password replaced by `mark` (dropped when mark is empty)."""
    try:
        parts = urlsplit(uri)
        if not (parts.username or parts.password):
            return uri
        host = parts.hostname or ""
        netloc = mark + host + (f":{parts.port}" if parts.port else "")
    except ValueError:  # an unparsable port or netloc: mask everything before the '@'
        return re.sub(r"(://)[^/@]*@", r"\1" + mark, uri)
    return urlunsplit(parts._replace(netloc=netloc))


def mask_uri(uri: str) -> str:
    """The URI without user:password or secret query values, so credentials never reach logs."""
    return _SECRET_PARAM.sub(r"\1***", without_userinfo(uri, "***@"))


def mask_text(text: str) -> str:
    """A message with every URI in it masked (errors from pyarrow, MLflow, urllib quote them)."""
    return _URI_IN_TEXT.sub(lambda m: mask_uri(m.group(0)), text)


def redact(obj: Any) -> Any:
    """A config tree (dicts, lists, strings) with every URI's credentials masked."""
    if isinstance(obj, dict):
        return {k: redact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str) and "://" in obj:
        return mask_text(obj)
    return obj
