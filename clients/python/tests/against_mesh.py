"""Places an order through Fulfillment with the installed client and reads it
back, as an Open edX service would; run by tests/tests/python_client.rs
against a running mesh (with the development LMS, so the order is enrolled).

Environment: COMMERCE_MESH_FULFILLMENT (host:port), COMMERCE_MESH_TOKEN
(scopes fulfillment:read and fulfillment:write), COMMERCE_MESH_READ_TOKEN
(fulfillment:read only), ORDER_NUMBER. Prints what it saw, one line each;
exits non-zero on the first surprise.
"""

from __future__ import annotations

import os
import sys
import time
from importlib.metadata import requires, version

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from packaging.requirements import Requirement

import commerce_mesh
from commerce_mesh.fulfillment.v1 import fulfillment_pb2 as pb
from commerce_mesh.fulfillment.v1 import fulfillment_pb2_grpc
from commerce_mesh.type.v1.money_pb2 import Money

# Bounds a wait for the worker, not a timing assertion.
GUARD_SECONDS = 60.0


def check(condition: bool, what: str) -> None:
    """Fails the script, saying what was expected."""
    if not condition:
        sys.exit(f"FAILED: {what}")


def dependencies_are_satisfied() -> None:
    """The installed versions satisfy what the package declares, so this run tests a valid install."""
    for line in requires("commerce-mesh-client") or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        installed = version(requirement.name)
        check(requirement.specifier.contains(installed, prereleases=True), f"{requirement} (installed {installed})")


# One time for every order of the run: the same order sent twice must be the
# same order, and `time.time()` read per order could cross a second between them.
PLACED_AT = int(time.time())


def order(number: str) -> pb.FulfillOrderRequest:
    """A free one-line verified enrollment for the learner ada (4242)."""
    return pb.FulfillOrderRequest(
        order_number=number,
        date_placed=Timestamp(seconds=PLACED_AT),
        source_system="python-client-test",
        learner=pb.Learner(lms_user_id="4242", lms_username="ada"),
        line_items=[
            pb.LineItem(
                line_item_id="1",
                course_run=pb.CourseRunEnrollment(course_run_key="course-v1:edX+DemoX+2025_T1", mode="verified"),
                price=Money(currency_code="USD", amount="0"),
            )
        ],
    )


def code_of(call: grpc.RpcError) -> grpc.StatusCode:
    """The status code of a failed call."""
    code = call.code()
    assert isinstance(code, grpc.StatusCode)
    return code


def main() -> None:
    target = os.environ["COMMERCE_MESH_FULFILLMENT"]
    number = os.environ["ORDER_NUMBER"]
    print(f"imported commerce_mesh from {os.path.dirname(commerce_mesh.__file__)}")
    dependencies_are_satisfied()

    # Without a token nothing is answered: the mesh authenticates every gRPC call.
    with grpc.insecure_channel(target) as bare:
        try:
            fulfillment_pb2_grpc.FulfillmentServiceStub(bare).GetFulfillment(
                pb.GetFulfillmentRequest(fulfillment_id="anything"), timeout=10
            )
            check(False, "a call without a token was answered")
        except grpc.RpcError as error:
            check(code_of(error) == grpc.StatusCode.UNAUTHENTICATED, f"no token: {code_of(error)} {error}")
            print(f"without a token: {code_of(error).name}")

    # A token lacking the RPC's scope is refused, and the refusal is not retried.
    with commerce_mesh.connect(target, os.environ["COMMERCE_MESH_READ_TOKEN"]) as read_only:
        try:
            fulfillment_pb2_grpc.FulfillmentServiceStub(read_only).FulfillOrder(order(number), timeout=10)
            check(False, "a read-only token placed an order")
        except grpc.RpcError as error:
            check(code_of(error) == grpc.StatusCode.PERMISSION_DENIED, f"read-only token: {code_of(error)}")
            print(f"with a read-only token: {code_of(error).name}")

    with commerce_mesh.connect(target, os.environ["COMMERCE_MESH_TOKEN"]) as channel:
        fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub(channel)

        placed = fulfillment.FulfillOrder(order(number), timeout=10)
        check(placed.created and len(placed.fulfillments) == 1, f"placed: {placed}")
        job = placed.fulfillments[0]
        check(job.order_number == number and job.line_item_id == "1", f"placed job: {job}")
        print(f"placed {number}: fulfillment {job.fulfillment_id}")

        again = fulfillment.FulfillOrder(order(number), timeout=10)
        check(not again.created, "the same order again created something")
        check([j.fulfillment_id for j in again.fulfillments] == [job.fulfillment_id], f"again: {again}")

        listed = fulfillment.ListOrderFulfillments(pb.ListOrderFulfillmentsRequest(order_number=number), timeout=10)
        check([j.fulfillment_id for j in listed.fulfillments] == [job.fulfillment_id], f"listed: {listed}")

        try:
            fulfillment.FulfillOrder(order(""), timeout=10)
            check(False, "an order without a number was accepted")
        except grpc.RpcError as error:
            check(code_of(error) == grpc.StatusCode.INVALID_ARGUMENT, f"no number: {code_of(error)}")
            violations = commerce_mesh.field_violations(error)
            check("order_number" in violations, f"violations: {violations}")
            print(f"invalid order: {code_of(error).name} naming {sorted(violations)}")

        # The worker enrolls the learner in the background: read the job until it settles.
        deadline = time.monotonic() + GUARD_SECONDS
        while True:
            current = fulfillment.GetFulfillment(
                pb.GetFulfillmentRequest(fulfillment_id=job.fulfillment_id), timeout=10
            ).fulfillment
            if current.state in (pb.FULFILLMENT_STATE_SUCCEEDED, pb.FULFILLMENT_STATE_FAILED):
                break
            check(time.monotonic() < deadline, f"still {pb.FulfillmentState.Name(current.state)}")
            time.sleep(0.1)
        state = pb.FulfillmentState.Name(current.state)
        check(current.state == pb.FULFILLMENT_STATE_SUCCEEDED, f"{state}: {current.last_error}")
        print(f"read back {current.fulfillment_id}: {state} for {current.learner.lms_username}")
    print("OK")


if __name__ == "__main__":
    main()
