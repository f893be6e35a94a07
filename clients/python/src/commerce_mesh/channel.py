"""Channels to the mesh's gRPC services: a bearer token on every call, and
retries of calls the mesh could not take (UNAVAILABLE).

Every RPC of the mesh needs `authorization: Bearer <JWT>` whose `scopes` claim
covers the RPC's scopes (`commerce.auth.v1.access` in the protos; for example
`fulfillment:read` and `fulfillment:write`); without one the service answers
UNAUTHENTICATED, with too few scopes PERMISSION_DENIED.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar, Union

import grpc

from commerce_mesh.errors import retry_delay

TokenSource = Union[str, Callable[[], str]]
"""A token, or a function answering the current one (called once per call, so it may refresh)."""

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")

# Method-name prefixes of the mesh's reads: repeating one changes nothing.
READ_PREFIXES = ("Get", "List", "Lookup", "BatchLookup")

# Writes the protos document as idempotent: a repeat answers the first result and changes nothing.
IDEMPOTENT_WRITES = frozenset(
    {
        "/commerce.fulfillment.v1.FulfillmentService/FulfillOrder",  # per (order_number, line_item_id)
        "/commerce.fulfillment.v1.FulfillmentService/RevokeFulfillment",  # per line item, forever
        "/commerce.fulfillment.v1.FulfillmentService/RefundOrder",  # each line as RevokeFulfillment
        "/commerce.fulfillment.v1.FulfillmentService/RequestRefund",  # per fulfillment
        "/commerce.identity.v1.CustomerIdentityService/RetireCustomer",
        "/commerce.catalog.v1.CatalogIngestService/IngestProductEvent",  # per (source, event_id)
    }
)


def is_idempotent(method: str) -> bool:
    """Whether the full method name (`/package.Service/Method`) may be sent again after UNAVAILABLE.

    An UNAVAILABLE call may still have been applied (the connection dropped
    after the service acted), so only reads and the writes documented as
    idempotent are retried. Not retried: `RetryFulfillment` (a repeat answers
    FAILED_PRECONDITION), `UpsertCustomer` (a repeat with `expected_version`
    answers ABORTED), `RecordPurchase` without a `purchase_id`, and anything
    this list does not know.
    """
    name = method.rsplit("/", 1)[-1]
    return name.startswith(READ_PREFIXES) or method in IDEMPOTENT_WRITES


@dataclass(frozen=True)
class RetryPolicy:
    """When a unary call is sent again: exponential backoff with full jitter,
    or the wait the service's `google.rpc.RetryInfo` names, within the call's
    deadline. Streaming calls are never retried."""

    max_attempts: int = 4
    """Attempts in all, the first included."""
    initial_backoff: float = 0.1
    """Seconds: the first wait is up to this long."""
    max_backoff: float = 5.0
    """Seconds: no wait is longer; a service asking (RetryInfo) for a longer one gets the error back."""
    multiplier: float = 2.0
    """Each wait's bound is the previous one's times this."""
    codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})
    """The status codes retried."""
    retryable: Callable[[str], bool] = field(default=is_idempotent)
    """Which methods may be retried, by full method name."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must not be negative, and multiplier at least 1")


def connect(
    target: str,
    token: TokenSource,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    retry: RetryPolicy | None = RetryPolicy(),
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to one service of the mesh (`host:port`, or `dns:///name:port`
    to balance across a headless Kubernetes service's pods) that sends `token`
    as `authorization: Bearer ...` on every call and retries per `retry`
    (`None`: never).

    Without `credentials` the channel is plaintext, as the mesh's own ports
    are (inside the cluster, behind its NetworkPolicies, or on this machine);
    give `grpc.ssl_channel_credentials()` to reach it through TLS.
    """
    if credentials is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        channel = grpc.secure_channel(target, credentials, options=options)
    interceptors: list[Any] = []
    # The retry interceptor is outermost, so each attempt asks the token source again.
    if retry is not None:
        interceptors.append(RetryOnUnavailable(retry))
    interceptors.append(BearerToken(token))
    return grpc.intercept_channel(channel, *interceptors)


class _CallDetails(NamedTuple):
    """A call's details with another timeout or metadata (grpc's own type is not public)."""

    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


def _details(
    details: grpc.ClientCallDetails,
    *,
    timeout: float | None = None,
    metadata: Sequence[tuple[str, str | bytes]] | None = None,
) -> grpc.ClientCallDetails:
    return _CallDetails(  # type: ignore[return-value]  # grpc accepts any object with these fields
        method=details.method,
        timeout=timeout if timeout is not None else details.timeout,
        metadata=metadata if metadata is not None else details.metadata,
        credentials=details.credentials,
        wait_for_ready=getattr(details, "wait_for_ready", None),
        compression=getattr(details, "compression", None),
    )


class BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call that does not carry one.

    Metadata, not call credentials: gRPC refuses call credentials on a
    plaintext channel, and the mesh's ports are plaintext.
    """

    def __init__(self, token: TokenSource) -> None:
        if isinstance(token, str) and not token.strip():
            raise ValueError("an empty token: every RPC of the mesh needs one (`commerce-mesh token` mints one)")
        self._token = token

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = list(details.metadata or ())
        if any(key == "authorization" for key, _ in metadata):
            return details
        token = self._token() if callable(self._token) else self._token
        metadata.append(("authorization", f"Bearer {token.strip()}"))
        return _details(details, metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        """Sends a unary call with the token."""
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        """Sends a server-streaming call with the token."""
        return continuation(self._with_token(client_call_details), request)

    def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        """Sends a client-streaming call (`ImportCustomers`) with the token."""
        return continuation(self._with_token(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        """Sends a bidirectional call with the token."""
        return continuation(self._with_token(client_call_details), request_iterator)


class RetryOnUnavailable(grpc.UnaryUnaryClientInterceptor):
    """Sends a unary call again when it ends with one of `policy.codes` and
    `policy.retryable(method)` holds, waiting between attempts; the last
    attempt's outcome is the call's.

    The call's timeout bounds every attempt and wait together. A retried call
    completes before `stub.Method.future(...)` returns.
    """

    def __init__(self, policy: RetryPolicy, sleep: Callable[[float], None] = time.sleep) -> None:
        self._policy = policy
        self._sleep = sleep

    def _waits(self) -> Iterator[float]:
        bound = self._policy.initial_backoff
        while True:
            yield random.uniform(0, min(bound, self._policy.max_backoff))
            bound *= self._policy.multiplier

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        """Sends the call, and again while it may be retried."""
        policy = self._policy
        if policy.max_attempts == 1 or not policy.retryable(client_call_details.method):
            return continuation(client_call_details, request)
        timeout = client_call_details.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        waits = self._waits()
        attempt = 1
        while True:
            details = client_call_details
            if deadline is not None:
                details = _details(client_call_details, timeout=max(deadline - time.monotonic(), 0.0))
            outcome = continuation(details, request)
            if outcome.code() not in policy.codes or attempt >= policy.max_attempts:
                return outcome
            asked = retry_delay(outcome)
            wait = asked if asked is not None else next(waits)
            if wait > policy.max_backoff or (deadline is not None and time.monotonic() + wait >= deadline):
                return outcome
            self._sleep(wait)
            attempt += 1
