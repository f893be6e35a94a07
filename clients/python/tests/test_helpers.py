"""The hand-written helpers against an in-process gRPC server serving the
generated FulfillmentService: the token on every call, retries of
UNAVAILABLE (and only where allowed), RetryInfo, deadlines, error details.

Run with the installed package on the path: `python -m unittest discover -s tests`.
"""

from __future__ import annotations

import threading
import unittest
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

import commerce_mesh
from commerce_mesh.fulfillment.v1 import fulfillment_pb2 as pb
from commerce_mesh.fulfillment.v1 import fulfillment_pb2_grpc

FULFILLMENT = "/commerce.fulfillment.v1.FulfillmentService"


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str, *details: Any) -> None:
    """Fails the call as the mesh does: the code, and a `google.rpc.Status` with `details` in the trailer."""
    rich = status_pb2.Status(code=code.value[0], message=message)
    for detail in details:
        rich.details.add().Pack(detail)
    context.set_trailing_metadata(((commerce_mesh.errors.STATUS_DETAILS_KEY, rich.SerializeToString()),))
    context.abort(code, message)


class Fulfillment(fulfillment_pb2_grpc.FulfillmentServiceServicer):
    """Answers after failing the first `failures` calls of each method with `failure`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self.tokens: list[str] = []
        self.failures = 0
        self.failure: Callable[[grpc.ServicerContext], None] = lambda context: _abort(
            context, grpc.StatusCode.UNAVAILABLE, "over capacity"
        )

    def _enter(self, method: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            calls = self.calls[method]
            self.tokens.extend(str(v) for k, v in context.invocation_metadata() if k == "authorization")
        if calls <= self.failures:
            self.failure(context)

    def GetFulfillment(self, request: pb.GetFulfillmentRequest, context: grpc.ServicerContext) -> Any:
        self._enter("GetFulfillment", context)
        return pb.GetFulfillmentResponse(fulfillment=pb.Fulfillment(fulfillment_id=request.fulfillment_id))

    def RetryFulfillment(self, request: pb.RetryFulfillmentRequest, context: grpc.ServicerContext) -> Any:
        self._enter("RetryFulfillment", context)
        return pb.RetryFulfillmentResponse(fulfillment=pb.Fulfillment(fulfillment_id=request.fulfillment_id))

    def FulfillOrder(self, request: pb.FulfillOrderRequest, context: grpc.ServicerContext) -> Any:
        self._enter("FulfillOrder", context)
        if not request.order_number:
            violation = error_details_pb2.BadRequest.FieldViolation(
                field="order_number", description="must not be empty", reason="REQUIRED"
            )
            info = error_details_pb2.ErrorInfo(reason="INVALID_ORDER", domain="commerce-mesh")
            _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid order",
                error_details_pb2.BadRequest(field_violations=[violation]),
                info,
            )
        return pb.FulfillOrderResponse(created=True)


class Waits:
    """A `sleep` that records the waits instead of sleeping: the tests assert what was asked, not how long it took."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)


class HelpersTest(unittest.TestCase):
    def setUp(self) -> None:
        self.service = Fulfillment()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        fulfillment_pb2_grpc.add_FulfillmentServiceServicer_to_server(self.service, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{port}"
        self.server.start()
        self.channels: list[grpc.Channel] = []

    def tearDown(self) -> None:
        for channel in self.channels:
            channel.close()
        self.server.stop(None)

    def stub(
        self, policy: commerce_mesh.RetryPolicy | None, waits: Waits | None = None, token: Any = "tok"
    ) -> fulfillment_pb2_grpc.FulfillmentServiceStub:
        """A stub through `connect`'s interceptors, with the retry interceptor's sleep replaced by `waits`."""
        channel = grpc.insecure_channel(self.target)
        self.channels.append(channel)
        interceptors: list[Any] = []
        if policy is not None:
            interceptors.append(commerce_mesh.RetryOnUnavailable(policy, sleep=waits or Waits()))
        interceptors.append(commerce_mesh.BearerToken(token))
        return fulfillment_pb2_grpc.FulfillmentServiceStub(grpc.intercept_channel(channel, *interceptors))

    def test_connect_sends_the_token_as_a_bearer_on_every_call(self) -> None:
        channel = commerce_mesh.connect(self.target, "secret-token")
        self.channels.append(channel)
        stub = fulfillment_pb2_grpc.FulfillmentServiceStub(channel)
        answer = stub.GetFulfillment(pb.GetFulfillmentRequest(fulfillment_id="f-1"), timeout=10)
        stub.FulfillOrder(pb.FulfillOrderRequest(order_number="EDX-1"), timeout=10)
        self.assertEqual(answer.fulfillment.fulfillment_id, "f-1")
        self.assertEqual(self.service.tokens, ["Bearer secret-token", "Bearer secret-token"])

    def test_a_token_function_is_asked_on_each_attempt(self) -> None:
        issued = iter(["t1", "t2", "t3"])
        self.service.failures = 1
        stub = self.stub(commerce_mesh.RetryPolicy(), token=lambda: next(issued))
        stub.GetFulfillment(pb.GetFulfillmentRequest(fulfillment_id="f-1"), timeout=10)
        self.assertEqual(self.service.tokens, ["Bearer t1", "Bearer t2"])

    def test_an_empty_token_is_refused_before_any_call(self) -> None:
        with self.assertRaises(ValueError):
            commerce_mesh.connect(self.target, " ")

    def test_unavailable_reads_are_retried_until_they_succeed(self) -> None:
        self.service.failures = 2
        waits = Waits()
        stub = self.stub(commerce_mesh.RetryPolicy(max_attempts=4, initial_backoff=0.2), waits)
        answer = stub.GetFulfillment(pb.GetFulfillmentRequest(fulfillment_id="f-9"), timeout=10)
        self.assertEqual(answer.fulfillment.fulfillment_id, "f-9")
        self.assertEqual(self.service.calls["GetFulfillment"], 3)
        self.assertEqual(len(waits.asked), 2)
        # Full jitter under an exponential bound: 0.2, then 0.4.
        self.assertTrue(0 <= waits.asked[0] <= 0.2 and 0 <= waits.asked[1] <= 0.4, waits.asked)

    def test_the_wait_retry_info_asks_for_is_honoured(self) -> None:
        self.service.failures = 1
        self.service.failure = lambda context: _abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            "shed",
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1, nanos=500_000_000)),
        )
        waits = Waits()
        self.stub(commerce_mesh.RetryPolicy(), waits).GetFulfillment(pb.GetFulfillmentRequest(), timeout=10)
        self.assertEqual(waits.asked, [1.5])
        self.assertEqual(self.service.calls["GetFulfillment"], 2)

    def test_retries_stop_after_max_attempts_with_the_last_error(self) -> None:
        self.service.failures = 100
        stub = self.stub(commerce_mesh.RetryPolicy(max_attempts=3))
        with self.assertRaises(grpc.RpcError) as raised:
            stub.GetFulfillment(pb.GetFulfillmentRequest(), timeout=10)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(self.service.calls["GetFulfillment"], 3)

    def test_no_retry_when_the_asked_wait_passes_the_deadline_or_the_longest_backoff(self) -> None:
        self.service.failures = 100
        self.service.failure = lambda context: _abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            "shed",
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=4)),
        )
        waits = Waits()
        stub = self.stub(commerce_mesh.RetryPolicy(max_backoff=10), waits)
        with self.assertRaises(grpc.RpcError):
            stub.GetFulfillment(pb.GetFulfillmentRequest(), timeout=2)
        self.assertEqual((self.service.calls["GetFulfillment"], waits.asked), (1, []))
        stub = self.stub(commerce_mesh.RetryPolicy(max_backoff=3), waits)
        with self.assertRaises(grpc.RpcError):
            stub.GetFulfillment(pb.GetFulfillmentRequest(), timeout=60)
        self.assertEqual((self.service.calls["GetFulfillment"], waits.asked), (2, []))

    def test_a_write_that_is_not_idempotent_is_not_retried(self) -> None:
        self.service.failures = 1
        stub = self.stub(commerce_mesh.RetryPolicy())
        with self.assertRaises(grpc.RpcError) as raised:
            stub.RetryFulfillment(pb.RetryFulfillmentRequest(fulfillment_id="f-1"), timeout=10)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(self.service.calls["RetryFulfillment"], 1)

    def test_an_idempotent_write_is_retried(self) -> None:
        self.service.failures = 1
        answer = self.stub(commerce_mesh.RetryPolicy()).FulfillOrder(
            pb.FulfillOrderRequest(order_number="EDX-1"), timeout=10
        )
        self.assertTrue(answer.created)
        self.assertEqual(self.service.calls["FulfillOrder"], 2)

    def test_other_codes_are_not_retried_and_their_details_are_readable(self) -> None:
        stub = self.stub(commerce_mesh.RetryPolicy())
        with self.assertRaises(grpc.RpcError) as raised:
            stub.FulfillOrder(pb.FulfillOrderRequest(), timeout=10)
        error = raised.exception
        self.assertEqual(error.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(self.service.calls["FulfillOrder"], 1)
        self.assertEqual(commerce_mesh.field_violations(error), {"order_number": "must not be empty"})
        request = commerce_mesh.bad_request(error)
        assert request is not None
        self.assertEqual(request.field_violations[0].reason, "REQUIRED")
        info = commerce_mesh.error_info(error)
        assert info is not None
        self.assertEqual(info.reason, "INVALID_ORDER")
        status = commerce_mesh.status(error)
        assert status is not None
        self.assertEqual((status.code, status.message), (code_pb2.INVALID_ARGUMENT, "invalid order"))
        self.assertIsNone(commerce_mesh.retry_delay(error))

    def test_an_error_without_details_has_none(self) -> None:
        self.service.failures = 1
        self.service.failure = lambda context: context.abort(grpc.StatusCode.NOT_FOUND, "no such fulfillment")
        with self.assertRaises(grpc.RpcError) as raised:
            self.stub(None).GetFulfillment(pb.GetFulfillmentRequest(), timeout=10)
        self.assertIsNone(commerce_mesh.status(raised.exception))
        self.assertEqual(commerce_mesh.field_violations(raised.exception), {})
        self.assertIsNone(commerce_mesh.status(ValueError("not a gRPC error")))

    def test_which_methods_are_retried(self) -> None:
        for method, retried in [
            (f"{FULFILLMENT}/GetFulfillment", True),
            (f"{FULFILLMENT}/ListOrderFulfillments", True),
            (f"{FULFILLMENT}/ListFulfillments", True),
            (f"{FULFILLMENT}/FulfillOrder", True),
            (f"{FULFILLMENT}/RefundOrder", True),
            (f"{FULFILLMENT}/RetryFulfillment", False),
            ("/commerce.identity.v1.CustomerIdentityService/LookupCustomer", True),
            ("/commerce.identity.v1.CustomerIdentityService/UpsertCustomer", False),
            ("/commerce.purchases.v1.PurchaseHistoryService/RecordPurchase", False),
        ]:
            self.assertEqual(commerce_mesh.is_idempotent(method), retried, method)


if __name__ == "__main__":
    unittest.main()
