"""Summarises the suite's RELIABILITY-FIGURES lines as a Markdown table.

    python scripts/reliability/report.py target/reliability/figures.jsonl [--write docs/RELIABILITY.md]

With --write, the text between the markers `<!-- figures:begin -->` and
`<!-- figures:end -->` in that file is replaced by the table, the date and the
machine it ran on.
"""

import datetime
import json
import os
import platform
import sys

BEGIN = "<!-- figures:begin -->"
END = "<!-- figures:end -->"


def dash(value):
    return "—" if value is None else str(value)


def row(figures):
    """(part, requests sent, faults injected, lost, leaked, duplicates, 5xx, notes) of one figures line."""
    cells = base_row(figures)
    # "leaked": a retired learner's name or a secret found where it must not be.
    leaked = figures.get("leaked", figures.get("found_in_logs"))
    return cells[:4] + (leaked,) + cells[4:]


def base_row(figures):
    """(part, requests sent, faults injected, lost, duplicates, 5xx, notes) of one figures line."""
    suite = figures.get("suite", "?")
    if suite in ("process-loss", "dependency-loss"):
        faults = figures.get("faults", [])
        accepted = figures.get("accepted", {})
        notes = (
            f"accepted {accepted.get('orders', 0)} orders ({accepted.get('line_items', 0)} line items), "
            f"{accepted.get('purchases', 0)} purchases, {accepted.get('catalog_events', 0)} catalog events; "
            f"{figures.get('unavailable_502_503_504', 0)} answers 502/503/504 and "
            f"{figures.get('no_answer', 0)} without an answer while something was down, each retried"
        )
        return (suite, figures.get("requests"), f"{len(faults)}: " + "; ".join(faults), figures.get("lost"),
                figures.get("duplicates"), figures.get("server_errors_other_5xx"), notes)
    if suite == "lms-chaos":
        faults = figures.get("faults", {})
        injected = sum(v for v in faults.values() if isinstance(v, int))
        kinds = ", ".join(f"{k} ×{v}" for k, v in faults.items())
        notes = (f"{figures.get('orders')} orders: {figures.get('succeeded')} SUCCEEDED, "
                 f"{figures.get('failed_4xx')} FAILED on a permanent 4xx, "
                 f"{figures.get('retried_after_4xx')} retried after a 4xx")
        return (suite, figures.get("lms_requests"), f"{injected} ({kinds})", figures.get("lost"),
                figures.get("duplicates"), None, notes)
    if suite == "access":
        requests = figures.get("requests", 0)
        refused = figures.get("refused_401", 0) + figures.get("refused_403", 0)
        notes = (f"{figures.get('operations')} operations; 401 ×{figures.get('refused_401')}, "
                 f"403 ×{figures.get('refused_403')}; the services were called {figures.get('reached_service')} times")
        return (suite, requests, f"{requests} bad or missing tokens", None, None, requests - refused, notes)
    if suite == "secrets":
        notes = (f"{figures.get('logs')}: {figures.get('log_lines')} log lines at debug, "
                 f"{figures.get('found_in_logs')} secrets found in them")
        return (suite, None, f"{figures.get('secret_values_checked')} secret values set and used", None, None, None,
                notes)
    if suite == "bad-input":
        notes = (f"{figures.get('operations')} operations; 2xx ×{figures.get('status_2xx')}, "
                 f"4xx ×{figures.get('status_4xx')}; {figures.get('seconds')} s")
        return (suite, figures.get("requests"), "generated from /openapi.json, valid and invalid", None, None,
                figures.get("status_5xx"), notes)
    if suite == "fuzz":
        targets = figures.get("targets", {})
        runs = sum(t.get("runs", 0) for t in targets.values())
        crashes = sum(t.get("crashes", 0) for t in targets.values())
        notes = ", ".join(f"{name} {t.get('runs')} runs" for name, t in targets.items())
        notes += f"; {figures.get('seconds_per_target')} s per target; crashes {crashes}"
        return (suite, runs, "fuzzer inputs", None, None, None, notes)
    if suite == "seams":
        notes = "; ".join(figures.get("cases", []))
        return (suite, figures.get("orders"), "odd orders; CustomerIdentity frozen (SIGSTOP) then thawed",
                figures.get("lost"), None, figures.get("server_errors_500"), notes)
    if suite == "seams-property":
        notes = (f"{figures.get('accepted')} accepted, {figures.get('refused_at_the_door')} refused naming the field; "
                 f"{figures.get('purchase_events_checked')} purchase events through PurchaseHistory's parser, "
                 f"{figures.get('refused_by_consumer')} refused by it")
        return (suite, figures.get("orders"), "generated FulfillOrder requests", figures.get("refused_by_consumer"),
                None, None, notes)
    if suite == "retirement":
        notes = (f"{figures.get('storage')}: {figures.get('answers_checked')} characters of answers, "
                 f"{figures.get('rows_scanned')} rows, {figures.get('stream_entries_and_keys_scanned')} stream "
                 f"entries and keys scanned for the old username and email; "
                 f"{figures.get('refused_after_retirement')} later orders refused CUSTOMER_RETIRED")
        return (suite, None, "a learner retired after an order and a purchase", None, None, None, notes)
    if suite == "retention":
        notes = (f"{figures.get('store')}: never more than {figures.get('largest')} kept "
                 f"({figures.get('window')}), {figures.get('left')} left at the end; {figures.get('seconds'):.1f} s")
        lost = figures.get("events", 0) - figures.get("consumed", 0)
        return (suite, figures.get("events"), "100,000 events published and consumed", lost, None, None, notes)
    if suite == "quota":
        notes = (f"{figures.get('replicas')} CatalogIngest replicas, quota in Redis: {figures.get('accepted')} accepted "
                 f"in {figures.get('seconds'):.0f} s where the quota admits {figures.get('quota_admits'):.0f} "
                 f"({figures.get('deviation_percent'):+.1f} %), {figures.get('throttled_429')} answered 429")
        return (suite, figures.get("offered"), "3× the quota offered through the gateway", None, None,
                figures.get("other"), notes)
    if suite == "slow-clients":
        notes = (f"{figures.get('slow_connections')} slow connections against {figures.get('permits')} permits; "
                 f"ordinary p99 {figures.get('p99_ms_alone'):.1f} ms alone, "
                 f"{figures.get('p99_ms_beside_slow'):.1f} ms beside them; {figures.get('ordinary_served')} of "
                 f"{figures.get('ordinary_requests')} served")
        lost = figures.get("ordinary_requests", 0) - figures.get("ordinary_served", 0)
        return (suite, figures.get("ordinary_requests"), "headers, bodies trickled; connections held idle", lost,
                None, None, notes)
    return (suite, None, None, None, None, None, json.dumps(figures))


def table(lines):
    out = [
        "| part | requests sent | faults injected | lost | leaked | duplicates | 5xx | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for figures in lines:
        out.append("| " + " | ".join(dash(cell) for cell in row(figures)) + " |")
    return "\n".join(out)


def machine():
    cores = os.cpu_count()
    try:
        with open("/proc/meminfo") as meminfo:
            kib = int(meminfo.readline().split()[1])
        memory = f"{kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        memory = "?"
    return f"{cores} cores, {memory}, {platform.system()} {platform.release()}"


def main(argv):
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0]) as source:
        lines = [json.loads(line) for line in source if line.strip()]
    text = table(lines)
    print(text)
    if len(argv) == 3 and argv[1] == "--write":
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        block = (f"{BEGIN}\nLast run: {stamp}, `scripts/reliability/run`, on {machine()}.\n\n{text}\n{END}")
        with open(argv[2]) as doc:
            content = doc.read()
        start, end = content.find(BEGIN), content.find(END)
        if start < 0 or end < 0:
            print(f"report: {argv[2]} has no {BEGIN} ... {END} block", file=sys.stderr)
            return 1
        with open(argv[2], "w") as doc:
            doc.write(content[:start] + block + content[end + len(END):])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
