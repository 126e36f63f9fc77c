"""Issue 26's targets and the defaults a device run decides, read off a ``gpu_path.py`` document: each with
its figure, its threshold and a verdict, so the GPU table in docs/speed.md is this report pasted rather than
judged by eye. A target whose rows are missing (a smoke run's shapes, a section skipped for time) is
``unmeasured``, never met; so is every target and default of a run that was not on a GPU (the issue's targets
are a lent H100's or H200's)."""

from __future__ import annotations

from collections.abc import Sequence

from gpu_scoring import COMPILED, PACKED  # the method names the rows carry: one spelling for both modules

SCORING_MFU = {"large": 0.40, "base": 0.30}  # bf16 MFU of the packed rows, at each of POINTS
POINTS = ("512", "64-512")
OLD_BASE_512 = 259.6  # pairs/s: tinyrm's base shape at 512 tokens on the lent H200, session 4 (session 5: 224.8)
SPEEDUP = 4.0  # "at least 4x today's pairs/s for base at 512 tokens": against the faster of the two old runs
TRAIN = {"shape": "large", "dora_rank": 128, "freeze_layers": 12, "length": 512, "mfu": 0.25}
HOST_X = 3.0  # host-only pairs/s over the faster packed row's
GRAPH_IDLE = 0.10  # the idle share of an eager packed pass above which CUDA graphs are worth building
TIE = 1.03  # a ratio within 3% of 1 is a tie: it earns no new default and loses no current one


def _scoring(doc: dict, shape: str, point: str, *methods: str) -> list[dict]:
    return [r for r in doc.get("scoring", []) if (r["shape"], r["point"]) == (shape, point) and r["method"] in methods]


def on_gpu(doc: dict) -> bool:
    return doc.get("machine", {}).get("device", "cpu") != "cpu"  # speedlib.machine_info: the CUDA device's name


def _target(name: str, figure: float | None, threshold: float, fmt: str, source: str | None, gpu: bool) -> dict:
    verdict = ("unmeasured" if figure is None else "unmeasured (not a GPU run)" if not gpu
               else "met" if figure >= threshold else "NOT met")
    return {"target": name, "figure": figure, "threshold": threshold, "verdict": verdict, "source": source,
            "figure_text": "-" if figure is None else format(figure, fmt), "threshold_text": format(threshold, fmt),
            "spec_text": "-"}


def _spec(doc: dict, target: dict) -> dict:
    """An MFU target's figure against the datasheet's dense bf16 peak too (the verdict stays on the measured one)."""
    peak = doc.get("peak_flops", {})
    if target["figure"] is not None and peak.get("bf16"):
        spec = peak.get("bf16_spec")
        target["spec_text"] = format(target["figure"] * peak["bf16"] / spec, ".1%") if spec else "spec unknown"
    return target


def _rows_text(row: dict) -> str:
    """The row a scoring figure came from, with its pairs timed and whether time cut them (issue 26: >= 20,000)."""
    if row.get("pairs") is None:
        return row["method"]
    return f"{row['method']}, {row['pairs']:,} pairs" + (", capped by time" if row.get("capped") else "")


def _best(rows: Sequence[dict], key: str) -> dict | None:
    rows = [r for r in rows if r.get(key) is not None]
    return max(rows, key=lambda r: r[key]) if rows else None


def targets(doc: dict) -> list[dict]:
    """One verdict per target of issue 26 (``met`` / ``NOT met`` / ``unmeasured``); ``source`` names the row
    that gave the figure (the better of the eager and compiled packed rows: compile is a config switch)."""
    out, gpu = [], on_gpu(doc)
    for shape, need in SCORING_MFU.items():
        for point in POINTS:
            row = _best(_scoring(doc, shape, point, *PACKED), "mfu_bf16")
            out.append(_spec(doc, _target(f"scoring MFU bf16, {shape}, {point} tokens", row and row["mfu_bf16"],
                                          need, ".1%", row and _rows_text(row), gpu)))
    row = _best(_scoring(doc, "base", "512", *PACKED), "pairs_per_s")
    rate = _target("scoring pairs/s, base, 512 tokens (4x the old H200 runs)", row and row["pairs_per_s"],
                   SPEEDUP * OLD_BASE_512, ",.1f", row and _rows_text(row), gpu)
    padded = _best(_scoring(doc, "base", "512", "tinyrm-padded"), "pairs_per_s")
    if row and padded:  # the same card's padded path beside the old runs' figure
        rate["source"] += f"; {row['pairs_per_s'] / padded['pairs_per_s']:.2f}x tinyrm-padded in this run"
    device = doc.get("machine", {}).get("device", "")
    if gpu and row and "H200" not in device:  # the old figure is an H200's: timings compare on one card only
        rate["verdict"] += f" (cross-card: the old runs were on an H200, this one on {device})"
    out.append(rate)
    # The verdict reads the executed FLOP count (~0.87x the approximate one the 12% was read with) where a
    # row has it; a verdict on the approximate count alone says so.
    trained = [r for r in doc.get("training", []) if all(r.get(k) == TRAIN[k] for k in TRAIN if k != "mfu")]
    row = _best(trained, "executed_mfu_bf16")
    key = "executed_mfu_bf16" if row else "approx_mfu_bf16"
    row = row or _best(trained, key)
    train = _target(f"training MFU bf16, {TRAIN['shape']} DoRA r{TRAIN['dora_rank']}, {TRAIN['freeze_layers']} "
                    f"frozen, {TRAIN['length']} tokens", row and row[key], TRAIN["mfu"], ".1%",
                    row and f"{row['attention']} step, executed FLOPs" + (
                        f" (approximate count: {row['approx_mfu_bf16']:.1%})" if row.get("approx_mfu_bf16") else ""),
                    gpu)
    if row and key == "approx_mfu_bf16":
        train["source"] = f"{row['attention']} step, approximate FLOP count"
        if gpu:
            train["verdict"] += " (approximate count only)"
    out.append(_spec(doc, train))
    for shape in SCORING_MFU:
        for point in POINTS:
            hosts = [r for r in _scoring(doc, shape, point, "host-only") if r.get("host_vs_packed") is not None]
            default = hosts[0] if hosts else None  # the first host row is --host-workers' first: 0, the engine's auto
            best = _best(hosts, "host_vs_packed")
            source = default and f"{default['host_workers']} host threads" + (
                f" ({best['host_workers']} threads: {best['host_vs_packed']:.2f}x)" if best is not default else "")
            out.append(_target(f"host-only / packed pairs/s, {shape}, {point} tokens",
                               default and default["host_vs_packed"], HOST_X, ".2f", source, gpu))
    return out


def _ratio(doc: dict, shape: str, point: str, method: str, against: str) -> float | None:
    top, bottom = (_best(_scoring(doc, shape, point, m), "pairs_per_s") for m in (method, against))
    return top["pairs_per_s"] / bottom["pairs_per_s"] if top and bottom else None


def decisions(doc: dict) -> list[dict]:
    """What the run says of the defaults docs/speed.md lists under "Reading the device run": ``stands``,
    ``change`` (with what to change), ``partial (k/n cells)`` (with what the measured ones say) or ``unmeasured``;
    ``evidence`` gives the ratios read. Every expected cell is a key, None where the run has no figure for it."""
    out, gpu = [], on_gpu(doc)
    config = doc.get("config", {})

    def decide(name: str, ratios: dict[str, float | None], stands, change: str, fmt: str = "{:.2f}x",
               basis: str = "") -> None:
        seen = {k: v for k, v in ratios.items() if v is not None}
        if not seen or not gpu:
            outcome = "unmeasured" if not seen else "unmeasured (not a GPU run)"
        else:
            verdict = "stands" if stands(list(seen.values())) else f"change: {change}"
            outcome = verdict if len(seen) == len(ratios) else (
                f"partial ({len(seen)}/{len(ratios)} cells): {verdict} on those measured")
        out.append({"decision": name, "outcome": outcome,
                    "evidence": (", ".join(f"{k} {fmt.format(v)}" for k, v in seen.items()) or "-") + basis})

    cells = [(s, p) for s in SCORING_MFU for p in POINTS]  # all four: a missing shape is a missing cell
    decide("attention='auto' scores packed on CUDA",
           {f"{s} {p} packed/padded": _ratio(doc, s, p, "tinyrm-packed", "tinyrm-padded") for s, p in cells},
           lambda r: min(r) >= 1 / TIE, "auto scores padded on CUDA (inference.packed.use_packed)")
    compiled = {f"{s} {p} compiled/packed": _ratio(doc, s, p, "tinyrm-packed-compiled", "tinyrm-packed")
                for s, p in cells}
    recompiled = any(r.get("graphs_compiled_timed") for r in doc.get("scoring", []) if r["method"] in COMPILED)
    decide("compile stays off by default", compiled, lambda r: recompiled or min(r) < TIE,
           "compile=True by default on CUDA (its one-time warm-up stated beside it)")
    sweep = {f"{r['shape']} {r['point']} {r['max_batch_tokens']} tokens/auto": r.get("vs_auto_budget")
             for r in doc.get("sweep", [])}
    for tokens in config.get("sweep_tokens") or []:  # a value the run skipped: a missing cell
        sweep.setdefault(f"{config.get('sweep_shape')} {config.get('sweep_point')} {tokens} tokens/auto", None)
    decide("the 'auto' token budget", sweep, lambda r: max(r) < TIE,
           "the budget of the fastest sweep row (inference.budget.default_batch_tokens)")
    # CUDA graphs save only the time a pass's GPU sits idle between kernels (launches, host work in the forward):
    # worth building only where the eager packed pass at the scoring budget idles more than GRAPH_IDLE of it.
    eager = [p for p in doc.get("profile", []) if not p.get("training") and not p["compiled"]]
    graphs = {f"{p['shape']} {p['point']} eager busy": p.get("busy") for p in eager}
    for shape in config.get("profile_shapes") or []:
        if not any(p["shape"] == shape for p in eager):
            graphs[f"{shape} eager busy"] = None
    passes = "; ".join(f"{p['shape']}: {p['sequences']:,} sequences, {p['tokens']:,} tokens" if "tokens" in p
                       else p["shape"] for p in eager if p.get("busy") is not None)
    decide("CUDA graphs stay unused", graphs, lambda r: min(r) >= 1 - GRAPH_IDLE,
           "try CUDA graphs over bucketed packed passes", fmt="{:.0%}",
           basis=(f" (based only on one profiled eager pass per shape at the scoring budget ({passes}), where a "
                  "pass's launch overhead is small by construction; small batches, as serving sends, not measured)"
                  if passes else ""))
    rates = {r["attention"]: r["pairs_per_s"] for r in doc.get("training", []) if r.get("pairs_per_s")}
    decide("attention='auto' trains packed on CUDA (varlen_attn has a backward)",
           {"packed/padded": rates["packed"] / rates["padded"] if {"packed", "padded"} <= rates.keys() else None},
           lambda r: min(r) >= 1 / TIE, "auto trains padded on CUDA (inference.packed.use_packed, training=True)")
    return out


def derived(doc: dict) -> dict:
    """The keys gpu_path's JSON carries from its measurements, recomputed at every save: targets and decisions."""
    return {"targets": targets(doc), "decisions": decisions(doc)}


def report(doc: dict) -> str:
    """The two tables, markdown."""
    lines = ["| target (issue 26) | figure | threshold | verdict | MFU vs spec peak | from |",
             "| --- | ---: | ---: | --- | ---: | --- |"]
    lines += [f"| {t['target']} | {t['figure_text']} | {t['threshold_text']} | {t['verdict']} | "
              f"{t.get('spec_text', '-')} | {t['source'] or '-'} |" for t in doc.get("targets", [])]
    lines += ["", "| default | outcome | evidence |", "| --- | --- | --- |"]
    lines += [f"| {d['decision']} | {d['outcome']} | {d['evidence']} |" for d in doc.get("decisions", [])]
    return "\n".join(lines)
