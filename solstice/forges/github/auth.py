"""The runner's RSA key and its OAuth access token (protocol §3.3, §3.5, §4).

The runner proves who it is with a JWT client assertion signed by its private key; the
authorization URL from the registration exchanges it for a short-lived bearer token. There is
no refresh token: :class:`TokenSource` mints a new assertion before the token expires, after a
401 (``invalidate``) and on a ForceTokenRefresh message.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from solstice.forges.core.errors import ForgeError, ForgeUnavailable, RegistrationGone
from solstice.forges.github import messages as m

KEY_BITS = 2048  # R: VssSigningCredentials c_minKeySize
ASSERTION_LIFETIME = 300.0  # R BearerTokenLifetime = 5 min
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Renew this long before the token's end, so no call goes out with a token about to die.
RENEW_MARGIN = 60.0
#: When the server gives no expires_in (§4: UNCONFIRMED), assume this lifetime.
DEFAULT_LIFETIME = 3600.0


def new_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)


def private_key_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def load_private_key(pem: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA private key")
    return key


def _b64(n: int, length: int | None = None) -> str:
    size = length or max(1, (n.bit_length() + 7) // 8)
    return base64.b64encode(n.to_bytes(size, "big")).decode()


def _int(b64: str) -> int:
    return int.from_bytes(base64.b64decode(b64), "big")


def public_key_parts(key: rsa.RSAPrivateKey) -> tuple[str, str]:
    """(exponent, modulus) as base64 big-endian, the pipelines agent's ``publicKey`` (§3.3)."""
    numbers = key.public_key().public_numbers()
    return _b64(numbers.e), _b64(numbers.n)


def public_key_xml(key: rsa.RSAPrivateKey) -> str:
    """The .NET ``RSAKeyValue`` XML the runner-admin flow sends as ``public_key`` (§3.4)."""
    exponent, modulus = public_key_parts(key)
    return f"<RSAKeyValue><Modulus>{modulus}</Modulus><Exponent>{exponent}</Exponent></RSAKeyValue>"


def rsa_params(key: rsa.RSAPrivateKey) -> dict[str, str]:
    """``.credentials_rsaparams`` (§3.5): fixed-length big-endian base64 (§13.4)."""
    p = key.private_numbers()
    size = (p.public_numbers.n.bit_length() + 7) // 8
    half = (size + 1) // 2
    return {
        "d": _b64(p.d, size),
        "dp": _b64(p.dmp1, half),
        "dq": _b64(p.dmq1, half),
        "exponent": _b64(p.public_numbers.e),
        "inverseQ": _b64(p.iqmp, half),
        "modulus": _b64(p.public_numbers.n, size),
        "p": _b64(p.p, half),
        "q": _b64(p.q, half),
    }


def key_from_rsa_params(data: Any) -> rsa.RSAPrivateKey:
    """The key of a ``.credentials_rsaparams`` object (keys case-insensitive, as G reads them)."""
    f = m.Fields(data, ".credentials_rsaparams")
    try:
        public = rsa.RSAPublicNumbers(_int(f.text("exponent")), _int(f.text("modulus")))
        private = rsa.RSAPrivateNumbers(
            p=_int(f.text("p")),
            q=_int(f.text("q")),
            d=_int(f.text("d")),
            dmp1=_int(f.text("dp")),
            dmq1=_int(f.text("dq")),
            iqmp=_int(f.text("inverseQ")),
            public_numbers=public,
        )
        return private.private_key()
    except (ValueError, TypeError) as exc:
        raise m.CodecError(".credentials_rsaparams", f"not a usable RSA key ({exc})") from None


def signing_algorithm(credentials: m.OAuthCredentials) -> str:
    """PS256 when FIPS cryptography is required, else RS256 (§4, §11, §12; R #3789)."""
    return "PS256" if credentials.require_fips else "RS256"


def client_assertion(
    credentials: m.OAuthCredentials,
    key: rsa.RSAPrivateKey,
    *,
    now: float | None = None,
    lifetime: float = ASSERTION_LIFETIME,
) -> str:
    """The JWT: iss = sub = clientId, aud = the authorization URL in use, fresh jti (§4).
    ``iat`` is omitted as R does; PyJWT's PSS salt length equals the hash's, .NET's 32."""
    t = int(time.time() if now is None else now)
    claims = {
        "iss": credentials.client_id,
        "sub": credentials.client_id,
        "aud": credentials.audience,
        "jti": str(uuid.uuid4()),
        "nbf": t,
        "exp": t + int(lifetime),
    }
    return jwt.encode(claims, key, algorithm=signing_algorithm(credentials), headers={"typ": "JWT"})


class TokenSource:
    """The runner's bearer token: cached, renewed ``margin`` seconds before it expires and
    after :meth:`invalidate`. Thread-safe: one exchange at a time."""

    def __init__(
        self,
        credentials: m.OAuthCredentials,
        key: rsa.RSAPrivateKey,
        *,
        session: requests.Session | None = None,
        timeout: float = 30.0,
        margin: float = RENEW_MARGIN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.credentials = credentials
        self._key = key
        self.session = session or requests.Session()
        self.timeout = timeout
        self.margin = margin
        self.clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0
        self.exchanges = 0  # how many OAuth exchanges were made (for tests and metrics)

    def __repr__(self) -> str:
        return f"TokenSource(client_id={self.credentials.client_id!r}, cached={self._token is not None})"

    def token(self) -> str:
        with self._lock:
            if self._token is None or self.clock() >= self._expires - self.margin:
                answer = self.exchange()
                self._token = answer.access_token
                lifetime = answer.expires_in if answer.expires_in is not None else DEFAULT_LIFETIME
                self._expires = self.clock() + lifetime
            return self._token

    def invalidate(self) -> None:
        """Forget the token (after a 401, or on ForceTokenRefresh); the next call mints one."""
        with self._lock:
            self._token = None

    def exchange(self) -> m.AccessToken:
        """One client_credentials grant with a fresh assertion (§4)."""
        self.exchanges += 1
        url = self.credentials.token_url
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(self.credentials, self._key),
        }
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        }
        try:
            resp = self.session.post(url, data=form, headers=headers, timeout=self.timeout)
        except requests.Timeout:
            raise ForgeUnavailable(
                f"{url}: no answer within {self.timeout:g} s", procedure="oauth"
            ) from None
        except requests.ConnectionError as exc:
            raise ForgeUnavailable(
                f"{url}: cannot connect ({type(exc).__name__})", procedure="oauth"
            ) from None
        if resp.status_code == 200:
            try:
                return m.AccessToken.from_dict(resp.json())
            except (ValueError, m.CodecError) as exc:
                raise ForgeError(
                    f"{url}: unexpected token answer: {exc}", status=200, procedure="oauth"
                ) from None
        raise oauth_error(url, resp)


def oauth_error(url: str, resp: requests.Response) -> ForgeError:
    """R reads ``error``/``error_description`` from a 400 JSON answer (§13.2); ``invalid_client``
    means the registration is gone (§4), a "Current server time is" text a clock skew."""
    status = resp.status_code
    code, description = "", ""
    if status == 400 and resp.headers.get("Content-Type", "").split(";")[0].strip() == "application/json":
        try:
            body = resp.json()
            code = str(body.get("error", ""))
            description = str(body.get("error_description", ""))
        except (ValueError, AttributeError):
            pass
    what = f"{url}: the OAuth exchange failed: {code or f'HTTP {status}'}" + (
        f" ({description})" if description else ""
    )
    kwargs: dict[str, Any] = {"status": status, "code": code, "procedure": "oauth"}
    if code == "invalid_client":  # checked first, as R does (§13.2)
        return RegistrationGone(what, **kwargs)
    if "Current server time is" in description:
        err = ForgeError(what, **kwargs)
        err.hint = "this host's clock is off by more than 5 minutes; fix its time (NTP)"
        return err
    if status >= 500 or status == 429:
        return ForgeUnavailable(what, **kwargs)
    if status in (401, 403):
        return RegistrationGone(what, **kwargs)
    return ForgeError(what, **kwargs)
