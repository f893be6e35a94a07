"""The Python client of commerce-mesh.

The stubs are generated from the mesh's protos when this package is built, one
module pair per proto file, after the proto package (`commerce.fulfillment.v1`
→ `commerce_mesh.fulfillment.v1`):

- `commerce_mesh.fulfillment.v1.fulfillment_pb2` (messages) and
  `fulfillment_pb2_grpc` (`FulfillmentServiceStub`);
- `commerce_mesh.identity.v1.identity_pb2[_grpc]` (CustomerIdentity),
  `commerce_mesh.catalog.v1.catalog_pb2[_grpc]` (CatalogIngest),
  `commerce_mesh.purchases.v1.purchases_pb2[_grpc]` (PurchaseHistory);
- `commerce_mesh.events.v1.events_pb2` (the event bus's messages),
  `commerce_mesh.type.v1.money_pb2` (`Money`), `commerce_mesh.auth.v1.auth_pb2`.

Written by hand: `connect` (a channel sending a bearer token and retrying
UNAVAILABLE, in `commerce_mesh.channel`) and the error-detail helpers of
`commerce_mesh.errors`.
"""

from commerce_mesh.channel import BearerToken, RetryOnUnavailable, RetryPolicy, TokenSource, connect, is_idempotent
from commerce_mesh.errors import bad_request, error_info, field_violations, retry_delay, status

__all__ = [
    "BearerToken",
    "RetryOnUnavailable",
    "RetryPolicy",
    "TokenSource",
    "bad_request",
    "connect",
    "error_info",
    "field_violations",
    "is_idempotent",
    "retry_delay",
    "status",
]
