"""AWS Signature Version 4: :class:`SigV4Signer` and the :class:`Credentials` it signs with."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


@dataclass(frozen=True, slots=True)
class Credentials:
    """One frozen set of credentials."""

    access_key: str
    secret_key: str
    token: str | None = None


class SigV4Signer:
    """Signature V4 for one region and service; the day's signing key is cached.

    S3 signs the payload hash as a header too (``x-amz-content-sha256``); other
    services only put it in the canonical request.
    """

    def __init__(self, region: str, service: str) -> None:
        self.region = region
        self.service = service
        self._hash_header = service == "s3"
        self._key: tuple[str, str, bytes] | None = None  # (secret, day, key)

    def _signing_key(self, secret: str, day: str) -> bytes:
        if self._key is None or self._key[:2] != (secret, day):
            key = hmac.new(f"AWS4{secret}".encode(), day.encode(), hashlib.sha256).digest()
            for part in (self.region, self.service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._key = (secret, day, key)
        return self._key[2]

    def sign(
        self,
        method: str,
        host: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        payload_sha256: str,
        creds: Credentials,
        now: datetime,
    ) -> dict[str, str]:
        """The request's headers with ``authorization`` and the ``x-amz-*`` it signs.

        ``path`` is the URI-encoded path exactly as sent; every header given is
        signed (names are lower-cased). ``host`` is signed but not returned.
        """
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        signed = {name.lower(): value for name, value in headers.items()}
        signed["host"] = host
        if self._hash_header:
            signed["x-amz-content-sha256"] = payload_sha256
        signed["x-amz-date"] = amz_date
        if creds.token:
            signed["x-amz-security-token"] = creds.token
        names = sorted(signed)
        canonical_query = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())
        )
        canonical = "\n".join(
            (
                method,
                path,
                canonical_query,
                "".join(f"{name}:{' '.join(signed[name].split())}\n" for name in names),
                ";".join(names),
                payload_sha256,
            )
        )
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = (
            f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n"
            f"{hashlib.sha256(canonical.encode()).hexdigest()}"
        )
        signature = hmac.new(
            self._signing_key(creds.secret_key, day), to_sign.encode(), hashlib.sha256
        ).hexdigest()
        del signed["host"]
        signed["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )
        return signed
