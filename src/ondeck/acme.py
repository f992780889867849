"""An ACME (RFC 8555) HTTP-01 client on certbot's `acme` library: account, order, chain.

The controller's certificate manager calls `AcmeClient.issue` from a worker
thread (the library is blocking), once per host set that needs a certificate.
Challenge responses go out through a `ChallengePublisher` (the router answers
/.well-known/acme-challenge/ on its plain listener). The account key is made
here and kept 0600 in the state dir; it is never logged. Every error of the
library or of the network is mapped once, in `_acme_errors`, to `AcmeFailure`.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import josepy as jose
import requests
from acme import challenges, client, crypto_util, messages
from acme import errors as acme_errors
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ondeck.certificates import new_private_key, write_secret_file
from ondeck.errors import AcmeFailure
from ondeck.spec.model import LETS_ENCRYPT_DIRECTORY

USER_AGENT = "ondeck"
NETWORK_TIMEOUT = 30  # seconds per HTTP request to the CA
ORDER_TIMEOUT = 120.0  # seconds for validation and issuance of one order
BAD_NONCE_RETRIES = 5  # the library retries once more inside each of ours
# Problem types that mean "the CA is briefly unwell", not "the CA said no".
_UNREACHABLE_CODES = {"serverInternal", "badNonce"}

log = logging.getLogger(__name__)


class ChallengePublisher(Protocol):
    """Where HTTP-01 answers are served from: the router, or a test's server."""

    def publish(self, token: str, key_authorization: str) -> None: ...

    def withdraw(self, token: str) -> None: ...


@dataclass(frozen=True)
class AcmeSettings:
    """Which CA, as whom: `tls.acme` of the spec."""

    directory: str = LETS_ENCRYPT_DIRECTORY
    email: str | None = None
    ca_bundle: Path | None = None  # trust for the CA's own HTTPS (a private ACME server)


class AcmeClient:
    """One ACME account at one directory; `issue` obtains a chain for a host set."""

    def __init__(self, settings: AcmeSettings, state_dir: Path, publisher: ChallengePublisher):
        self.settings = settings
        self.publisher = publisher
        slug = hashlib.sha256(settings.directory.encode()).hexdigest()[:16]
        self.key_path = state_dir / "acme" / slug / "account.key"
        self._client: client.ClientV2 | None = None

    def issue(self, hosts: Sequence[str], key_pem: bytes) -> bytes:
        """The full chain (PEM) of a new certificate for `hosts`, for the key `key_pem`."""
        with _acme_errors(f"certificate for {', '.join(hosts)}"):
            acme = self._account()
            order = acme.new_order(crypto_util.make_csr(key_pem, list(hosts)))
            tokens = self._answer(acme, order)
            try:
                deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
                done = acme.poll_and_finalize(order, deadline)
            finally:
                for token in tokens:
                    self.publisher.withdraw(token)
        return done.fullchain_pem.encode()

    def _answer(self, acme: client.ClientV2, order: messages.OrderResource) -> list[str]:
        """Publish and answer the HTTP-01 challenge of every pending authorization."""
        tokens = []
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue  # the CA reuses a recent authorization: nothing to prove
            challenge = _http01(authz)
            response, validation = challenge.response_and_validation(acme.net.key)
            token = challenge.chall.encode("token")
            self.publisher.publish(token, validation)
            tokens.append(token)
            acme.answer_challenge(challenge, response)
        return tokens

    def _account(self) -> client.ClientV2:
        """The registered account (registered once per client; the CA finds an existing one)."""
        if self._client is not None:
            return self._client
        net = _Network(jose.jwk.JWKEC(key=self._account_key()), alg=jose.jwa.ES256,
                       user_agent=USER_AGENT, timeout=NETWORK_TIMEOUT)  # fmt: skip
        if self.settings.ca_bundle is not None:
            # requests takes a CA bundle path where the library types a bool
            net.verify_ssl = str(self.settings.ca_bundle)  # type: ignore[assignment]
        acme = client.ClientV2(client.ClientV2.get_directory(self.settings.directory, net), net)
        contact = (f"mailto:{self.settings.email}",) if self.settings.email else ()
        registration = messages.NewRegistration(contact=contact, terms_of_service_agreed=True)
        try:
            acme.new_account(registration)
        except acme_errors.ConflictError as exists:  # this key already has an account
            net.account = messages.RegistrationResource(
                uri=exists.location, body=messages.Registration()
            )
        self._client = acme
        return acme

    def _account_key(self) -> ec.EllipticCurvePrivateKey:
        """The account key, created on first use and kept 0600 under the state dir."""
        if not self.key_path.exists():
            write_secret_file(self.key_path, new_private_key())
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise AcmeFailure(f"{self.key_path} is not an ECDSA key", refused=True)
        return key


def _http01(authz: messages.AuthorizationResource) -> messages.ChallengeBody:
    for challenge in authz.body.challenges:
        if isinstance(challenge.chall, challenges.HTTP01):
            return challenge
    raise AcmeFailure(
        f"the CA offers no HTTP-01 challenge for {authz.body.identifier.value}", refused=True
    )


class _Network(client.ClientNetwork):
    """The library's network with more patience for `badNonce` (retry-able by RFC 8555)."""

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        for _ in range(BAD_NONCE_RETRIES - 1):
            try:
                return super().post(*args, **kwargs)
            except messages.Error as error:
                if error.code != "badNonce":
                    raise
        return super().post(*args, **kwargs)


@contextlib.contextmanager
def _acme_errors(what: str) -> Iterator[None]:
    """Map the library's and the network's errors to `AcmeFailure`, once, here."""
    try:
        yield
    except AcmeFailure:
        raise
    except acme_errors.ValidationError as exc:
        reasons = "; ".join(_failed_validation(authz) for authz in exc.failed_authzrs)
        raise AcmeFailure(f"{what}: validation failed: {reasons}", refused=True) from exc
    except messages.Error as exc:
        raise AcmeFailure(
            f"{what}: the CA answered {exc.code or exc.typ}: {exc.detail or exc.description}",
            refused=exc.code not in _UNREACHABLE_CODES,
        ) from exc
    except acme_errors.IssuanceError as exc:
        raise AcmeFailure(
            f"{what}: the CA did not issue: {exc.error.detail}", refused=True
        ) from exc
    except acme_errors.TimeoutError as exc:
        raise AcmeFailure(f"{what}: the order was not done in time", refused=False) from exc
    except requests.exceptions.RequestException as exc:
        raise AcmeFailure(f"{what}: the CA is unreachable: {_short(exc)}", refused=False) from exc
    except (acme_errors.Error, jose.errors.Error) as exc:
        raise AcmeFailure(f"{what}: unexpected answer from the CA: {exc}", refused=False) from exc


def _failed_validation(authz: messages.AuthorizationResource) -> str:
    errors = [c.error for c in authz.body.challenges if c.error is not None]
    detail = errors[0].detail if errors else "no detail"
    return f"{authz.body.identifier.value}: {detail}"


def _short(exc: requests.exceptions.RequestException) -> str:
    """The innermost reason of a requests error, without its URL-heavy wrapping."""
    inner: BaseException = exc
    while inner.__context__ is not None and inner.__context__ is not inner:
        inner = inner.__context__
    return str(inner).split(": ", 1)[-1] or type(exc).__name__
