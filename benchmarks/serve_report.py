"""The markdown report of ``serve_load.py --scenario under-load``: latency, throughput, shedding and engine rows."""

from __future__ import annotations

import os

from serve_lib import fmt


def outcomes(o: dict) -> str:
    return f"{o.get('200', 0)} / {o.get('503', 0)} / {o.get('abandoned', 0)}" + (
        f" (+{sum(v for k, v in o.items() if k not in ('200', '503', 'abandoned'))} errors)"
        if set(o) - {"200", "503", "abandoned"} else "")


def report(config, rows: list[dict], max_bytes: int, forward: int | None, before: list[str]) -> None:
    """The under-load scenario's tables in markdown (``config``: serve_load's ``LoadConfig``; ``before``: the
    server flags that emulate the unsliced scheduler)."""
    print(f"\n## tinyrm serve under load: model {config.model}, {os.cpu_count()} CPU cores "
          f"(load average {os.getloadavg()[0]:.1f} at the end), {config.duration_s:g} s per measurement"
          f"{' (--smoke: tiny sizes, figures mean nothing)' if config.smoke else ''}\n")
    print(f"Server --threads {config.threads} per process (per Ray replica), --request-timeout "
          f"{config.request_timeout_s:g} s, --max-request-bytes {max_bytes}"
          f"{' (raised from 1 MB: the large bodies of these texts need it)' if max_bytes > 1_000_000 else ''}, "
          f"{'other flags: ' + config.server_args + ', ' if config.server_args else ''}"
          f"texts: HHH dev pairs truncated to {config.max_chars} characters, both orders.")
    if any(r["measure"] in ("latency", "throughput") for r in rows):
        print(f"**before** = the unsliced scheduler, emulated by `{' '.join(before)} --forward-batch-size {forward}`: "
              "one forward call takes whole requests (up to 4,096 pairs), as the old batcher did; **after** = "
              "the defaults (slices round-robin), same forward batch.\n")
    lat = [r for r in rows if r["measure"] == "latency"]
    if lat:
        print(f"### 1-pair /v1/compare latency while a {config.large_items}-item /v1/compare_batch is in flight "
              f"({config.latency_clients} closed-loop 1-pair clients, 1 large client; at least {config.duration_s:g} s"
              f"{'' if config.abandon_large else ' and until the first large request is answered'})\n")
        print("| engine | rows | idle p50 ms | 1-pair requests | p50 ms | p99 ms | max ms | 1-pair not 200 "
              "| large: 200 / 503 / abandoned at end | large mean s | wall s |")
        print("|---|---|" + "---:|" * 9)
        for r in lat:
            print(f"| {r['engine']} | {r['scheduler']} | {fmt(r['idle_p50_ms'])} | {r['requests']} "
                  f"| {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {fmt(r['max_ms'])} "
                  f"| {sum(r['outcomes'].values()) - r['requests']} | {outcomes(r['large_outcomes'])} "
                  f"| {fmt(r['large_mean_s'], '.1f')} | {r['wall_s']:.0f} |")
    thr = [r for r in rows if r["measure"] == "throughput"]
    if thr:
        base = {r["scheduler"]: r["pairs_per_s"] for r in thr if r["engine"] == "local"}
        print(f"\n### Saturating load: {config.load_clients} clients each looping {config.load_items}-item "
              "/v1/compare_batch requests\n")
        print("| engine | rows | processes x threads | requests | pairs/s | vs local before | vs local after "
              "| request p50 s | mean call (pairs) | peak RSS MB (tree) | not 200 |")
        print("|---|---|---|" + "---:|" * 8)
        for r in thr:
            vs = [fmt(r["pairs_per_s"] / base[k], ".2f") + "x" if base.get(k) else "n/a" for k in ("before", "after")]
            print(f"| {r['engine']} | {r['scheduler']} | {r['replicas'] or 1} x {r['threads']} | {r['requests']} "
                  f"| {r['pairs_per_s']:.2f} | {vs[0]} | {vs[1]} | {fmt(r['p50_ms'] / 1000, '.1f')} "
                  f"| {fmt(r['mean_call_pairs'], '.0f')} | {r['peak_rss_mb']:.0f} "
                  f"| {sum(r['outcomes'].values()) - r['requests']} |")
        if base.get("before") and base.get("after"):
            ratio = base["after"] / base["before"]
            print(f"\nThroughput after / before = {ratio:.3f} ({100 * (ratio - 1):+.1f} %); the issue allows fairness "
                  f"to cost 5 %: {'within' if ratio >= 0.95 else 'OVER'} the bound.")
    shed = [r for r in rows if r["measure"] == "shed"]
    if shed:
        print(f"\n### Shedding: server --max-items {config.shed_items} --max-queued-pairs {config.shed_items} "
              f"holding one {config.shed_items}-item request; time from send to the answer of another request\n")
        print("| request | tries | shed (503, overloaded) | median ms | max ms | Retry-After on every 503 "
              "| Retry-After values |")
        print("|---|---:|---:|---:|---:|---|---|")
        for r in shed:
            values = ", ".join(sorted(set(map(str, r["retry_after"]))))
            print(f"| {r['items']} items | {r['tries']} | {r['shed_503']} | {r['median_ms']:.1f} "
                  f"| {r['max_ms']:.1f} | {'yes' if r['retry_after_present'] else 'NO'} | {values} |")
    if any(r["engine"] != "local" for r in rows):
        print("\nRay rows: the after load through Ray Serve's proxy; each replica holds a model and uses --threads "
              "cores, so on a machine with few cores replicas compete for the same ones. Their RSS counts Ray's own "
              "processes (GCS, raylet, proxy, controller) and the object store's shared pages once per process.")
