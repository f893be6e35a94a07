"""Helpers of scripts/reliability/bad-input: free ports, the OpenAPI operations, and
the figures read back from schemathesis' HAR and JSON reports.

    bad_input.py ports N                   N distinct free loopback ports, space-separated
    bad_input.py operations OPENAPI_JSON   how many operations the document has
    bad_input.py summarize --floor N --seconds S [--figures FILE] --server-errors FILE \
        [--unauthenticated LABEL] LABEL=REPORT_DIR...
                                           the figures; exit 1 on any 5xx, too few requests,
                                           or a 2xx in the pass without a token

The first LABEL=REPORT_DIR is the pass the floor applies to (the one with a token).
"""

import argparse
import glob
import json
import os
import socket
import sys
from collections import Counter

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
# How many server errors are shown in full on stderr (every one goes to the file).
SHOWN_SERVER_ERRORS = 5


def free_ports(count):
    """Binds every socket before closing any, so the ports differ from each other."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def operations(document):
    return sum(1 for item in document.get("paths", {}).values() for method in item if method in HTTP_METHODS)


def only_file(directory, prefix):
    found = sorted(glob.glob(os.path.join(directory, f"{prefix}*")))
    if len(found) != 1:
        raise SystemExit(f"bad-input: expected one {prefix}* report in {directory}, found {found}")
    return found[0]


def status_class(status):
    return f"status_{status // 100}xx" if 100 <= status <= 599 else "no_response"


def read_pass(directory):
    """The HAR entries (one per request sent) and the JSON run report of one schemathesis run."""
    with open(only_file(directory, "har"), encoding="utf-8") as f:
        entries = json.load(f)["log"]["entries"]
    with open(only_file(directory, "json"), encoding="utf-8") as f:
        report = json.load(f)
    return entries, report


def describe(entry):
    request, response = entry["request"], entry["response"]
    body = request.get("postData", {}).get("text", "")
    return (
        f"{request['method']} {request['url']}\n"
        f"  request body: {body!r}\n"
        f"  response {response['status']}: {response.get('content', {}).get('text', '')!r}\n"
    )


def summarize(args):
    totals = Counter()
    server_errors = []
    floor_pass_requests = None
    tested_operations = 0
    # Every operation requires a bearer token, so a 2xx without one is a bypass.
    unauthenticated_successes = []
    for spec in args.passes:
        label, _, directory = spec.partition("=")
        entries, report = read_pass(directory)
        classes = Counter(status_class(e["response"]["status"]) for e in entries)
        statuses = Counter(e["response"]["status"] for e in entries)
        server_errors += [(label, e) for e in entries if 500 <= e["response"]["status"] <= 599]
        if label == args.unauthenticated:
            unauthenticated_successes += [e for e in entries if 200 <= e["response"]["status"] <= 299]
        totals["requests"] += len(entries)
        totals.update(classes)
        tested = report.get("operations", {}).get("tested", 0)
        if floor_pass_requests is None:
            floor_pass_requests, tested_operations = len(entries), tested
        cases = report.get("test_cases", {})
        print(
            f"bad-input: pass {label}: {len(entries)} requests over {tested} operations, "
            f"statuses {dict(sorted(statuses.items()))}; schemathesis: {cases.get('generated', 0)} test cases, "
            f"{cases.get('with_failures', 0)} failing, errors {report.get('errors', [])}, "
            f"stopped by {report.get('stop_reason')}",
            file=sys.stderr,
        )

    with open(args.server_errors, "w", encoding="utf-8") as f:
        for label, entry in server_errors:
            f.write(f"[{label}] {describe(entry)}")
    for label, entry in server_errors[:SHOWN_SERVER_ERRORS]:
        print(f"bad-input: server error in pass {label}: {describe(entry)}", end="", file=sys.stderr)

    figures = {
        "suite": "bad-input",
        "requests": totals["requests"],
        "status_2xx": totals["status_2xx"],
        "status_4xx": totals["status_4xx"],
        "status_5xx": totals["status_5xx"],
        "operations": tested_operations,
        "seconds": round(args.seconds, 1),
    }
    others = {k: v for k, v in totals.items() if k in ("status_1xx", "status_3xx", "no_response")}
    if others:
        print(f"bad-input: other answers: {others}", file=sys.stderr)
    line = json.dumps(figures, separators=(",", ":"))
    print(f"RELIABILITY-FIGURES {line}")
    if args.figures:
        with open(args.figures, "w", encoding="utf-8") as f:
            f.write(line + "\n")

    ok = True
    if server_errors:
        print(f"bad-input: FAIL: {len(server_errors)} responses 5xx (all in {args.server_errors})", file=sys.stderr)
        ok = False
    for entry in unauthenticated_successes[:SHOWN_SERVER_ERRORS]:
        print(f"bad-input: answered without a token: {describe(entry)}", end="", file=sys.stderr)
    if unauthenticated_successes:
        print(f"bad-input: FAIL: {len(unauthenticated_successes)} responses 2xx without a token", file=sys.stderr)
        ok = False
    if floor_pass_requests < args.floor:
        print(f"bad-input: FAIL: {floor_pass_requests} requests with a token, fewer than {args.floor}", file=sys.stderr)
        ok = False
    return 0 if ok else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    ports = commands.add_parser("ports")
    ports.add_argument("count", type=int)
    ops = commands.add_parser("operations")
    ops.add_argument("document")
    summary = commands.add_parser("summarize")
    summary.add_argument("--floor", type=int, required=True)
    summary.add_argument("--seconds", type=float, required=True)
    summary.add_argument("--figures")
    summary.add_argument("--server-errors", required=True)
    summary.add_argument("--unauthenticated", help="the pass sent without a token")
    summary.add_argument("passes", nargs="+", metavar="LABEL=REPORT_DIR")
    args = parser.parse_args()

    if args.command == "ports":
        print(" ".join(str(p) for p in free_ports(args.count)))
        return 0
    if args.command == "operations":
        with open(args.document, encoding="utf-8") as f:
            print(operations(json.load(f)))
        return 0
    return summarize(args)


if __name__ == "__main__":
    sys.exit(main())
