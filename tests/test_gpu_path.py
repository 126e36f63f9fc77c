"""benchmarks/gpu_path.py (the lent-GPU benchmark), on the CPU: its exit status says whether every section
ran, the host-only row removes the forward pass and nothing else, and its training pairs survive
``--length-balance``; plus ``tinyrm.inference.budget``, the device-sized token budget it uses."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from tinyrm.inference.budget import CPU_BATCH_TOKENS, MAX_BATCH_TOKENS, activation_bytes_per_token, default_batch_tokens
from tinyrm.inference.engine import InferenceConfig
from tinyrm.pairwise.model import RewardModel

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def gpu_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # gpu_path imports speedlib from beside it
    spec = importlib.util.spec_from_file_location("gpu_path_benchmark", BENCH / "gpu_path.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_failed_section_fails_the_run(gpu_path, monkeypatch, tmp_path, capsys):
    """A section that raises is recorded (JSON ``errors``, with its traceback) and the exit status is 1."""
    speedlib = sys.modules["speedlib"]
    monkeypatch.setattr(speedlib, "matmul_peak", lambda dtype, n=None: 1e12)  # no timing needed here

    def broken(*args, **kwargs):
        raise RuntimeError("forced for the test")

    monkeypatch.setattr(speedlib, "random_modernbert", broken)
    out = tmp_path / "gpu_path.json"
    assert gpu_path.main(["--smoke", "--output", str(out)]) == 1
    document = json.loads(out.read_text())
    failed = {e["what"] for e in document["errors"]}
    assert {"building smoke", "training setup"} <= failed
    assert all("forced for the test" in e["error"] and e["traceback"] for e in document["errors"])
    assert "FAILED" in capsys.readouterr().err


def test_packed_training_flag_errors_clearly(gpu_path, capsys):
    gpu_lib = sys.modules["gpu_lib"]
    if gpu_lib.packed_training_available():
        assert gpu_path.parse_args(["--train-attention", "packed"]).train_attention == ["packed"]
        return
    assert gpu_path.parse_args([]).train_attention == ["padded"]
    with pytest.raises(SystemExit) as exit_info:
        gpu_path.parse_args(["--train-attention", "padded", "packed"])
    assert exit_info.value.code == 2
    assert "packed training not available in this tinyrm" in capsys.readouterr().err


def test_training_pairs_survive_length_balance(gpu_path):
    gpu_lib = sys.modules["gpu_lib"]
    raw = gpu_lib.synthetic_pairs(40, 64, spread=0.0, seed=3)
    pairs = gpu_lib.alternate_length_cue(raw)
    assert [len(a) > len(b) for _, a, b in pairs] == [i % 2 == 0 for i in range(40)]  # never a tie
    for (p0, a0, b0), (p1, a1, b1) in zip(raw, pairs):  # same prompt, same token (word) counts
        assert p0 == p1 and sorted([len(a0.split()), len(b0.split())]) == sorted([len(a1.split()), len(b1.split())])


def test_host_only_removes_the_forward_and_nothing_else(gpu_path, tiny_modernbert):
    gpu_lib = sys.modules["gpu_lib"]
    rm = RewardModel.from_pretrained(tiny_modernbert, device="cpu")
    rm.engine.config.attention = "packed"
    rm.engine.config.precision = "bf16"
    with pytest.raises(ValueError, match="recheck_margin"), gpu_lib.forward_removed(rm.engine):
        pass  # bf16 with the guard on: its fp32 re-scoring of near-ties would run the model, so refused
    rm.engine.config.precision = "fp32"
    items = [("What is 2 + 2?", "4", "five"), ("Name a colour.", "blue", "a long answer about colours")]
    prepared = rm.engine.prepared()
    real = rm.compare_batch(items)
    calls = []  # the packed forward calls the layers, not the top module: count a linear layer's calls
    linear = next(m for m in prepared.model.modules() if isinstance(m, torch.nn.Linear))
    handle = linear.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with gpu_lib.forward_removed(rm.engine):
            assert rm.compare_batch(items) == [0.5, 0.5]  # zero logits: P = 0.5, and the pipeline ran
        assert not calls
        assert rm.compare_batch(items) == pytest.approx(real) and calls  # the forward is back
    finally:
        handle.remove()
    assert rm.engine.prepared() is prepared


def test_default_batch_tokens_is_todays_value_off_cuda(tiny_modernbert):
    rm = RewardModel.from_pretrained(tiny_modernbert, device="cpu")
    assert default_batch_tokens("cpu", rm.model) == CPU_BATCH_TOKENS == 16384
    assert default_batch_tokens(torch.device("cpu")) == CPU_BATCH_TOKENS
    # the engine's default budget is "auto": the same 16,384 on the CPU; a number or None (rows only) as given
    assert InferenceConfig().max_batch_tokens == "auto" and rm.engine._limits(None, None) == (None, CPU_BATCH_TOKENS)
    rm.engine.config.max_batch_tokens = None
    assert rm.engine._limits(8, None) == (8, None) and rm.engine._limits(None, 300) == (None, 300)
    for bad in ("big", 0):
        with pytest.raises(ValueError, match="max_batch_tokens"):
            InferenceConfig(max_batch_tokens=bad)


def test_auto_budget_on_cuda_reaches_the_batches(tiny_modernbert, monkeypatch):
    """On CUDA, "auto" asks default_batch_tokens on every call (no GPU needed: the device and the function
    are stood in for), and a budget given to the call still wins."""
    from tinyrm.inference import engine as engine_module

    rm = RewardModel.from_pretrained(tiny_modernbert, device="cpu")
    asked = []
    monkeypatch.setattr(engine_module, "default_batch_tokens",
                        lambda device, model, max_length: asked.append((str(device), max_length)) or 4096)
    monkeypatch.setattr(rm, "device", torch.device("cuda"))
    assert rm.engine._limits(None, None) == (None, 4096) and rm.engine._limits(None, 100) == (None, 100)
    assert asked == [("cuda", rm.config.max_length)]


def test_auto_budget_is_asked_once_per_call(tiny_modernbert, monkeypatch):
    """compare_batch resolves "auto" once and hands the number down: not again per chunk, in the pipeline or
    in the near-tie recheck."""
    from tinyrm.inference import engine as engine_module

    rm = RewardModel.from_pretrained(tiny_modernbert, device="cpu")
    asked = []
    monkeypatch.setattr(engine_module, "default_batch_tokens",
                        lambda device, model, max_length: asked.append(max_length) or 4096)
    rm.engine.config.chunk_pairs, rm.engine.config.recheck_margin = 2, 1.0  # 3 chunks, every pair rechecked
    items = [("Which is larger, 3 or 5?", "5", "3")] * 5
    for overlap in ("off", "on"):
        rm.engine.config.overlap = overlap
        asked.clear()
        rm.compare_batch(items)
        assert asked == [rm.config.max_length]


def test_default_batch_tokens_on_cuda_follows_free_memory(tiny_modernbert):
    rm = RewardModel.from_pretrained(tiny_modernbert, device="cpu")
    per_token = activation_bytes_per_token(rm.model, 512)
    assert per_token > 0
    # free_bytes stands in for torch.cuda.mem_get_info: no GPU is needed to check the arithmetic.
    mid = default_batch_tokens("cuda", rm.model, free_bytes=4 * per_token * 100_000)
    assert mid == 100_000 // 4096 * 4096
    assert default_batch_tokens("cuda", rm.model, free_bytes=per_token) == CPU_BATCH_TOKENS  # never below today's
    assert default_batch_tokens("cuda", rm.model, free_bytes=10**15) == MAX_BATCH_TOKENS
    # Longer sequences hold more attention scores per token: a smaller budget from the same memory.
    assert default_batch_tokens("cuda", rm.model, max_length=8192, free_bytes=4 * per_token * 100_000) < mid


def test_host_only_rows_per_host_workers(gpu_path, monkeypatch, tmp_path):
    """One host-only row per --host-workers value, each saying its thread count; the engine's settings are
    put back for the next method."""
    speedlib = sys.modules["speedlib"]
    monkeypatch.setattr(speedlib, "matmul_peak", lambda dtype, n=None: 1e12)
    out = tmp_path / "gpu_path.json"
    args = ["--smoke", "--no-training", "--sweep-tokens", "--points", "16-64", "--methods", "host-only",
            "tinyrm-packed", "tinyrm-packed-compiled", "--host-workers", "1", "3", "--output", str(out)]
    assert gpu_path.main(args) == 0
    document = json.loads(out.read_text())
    rows = document["scoring"]
    assert [(r["method"], r["host_workers"]) for r in rows] == [("host-only", 1), ("host-only", 3),
                                                                 ("tinyrm-packed", 1), ("tinyrm-packed-compiled", 1)]
    assert all(r["host_vs_packed"] for r in rows[:2])
    # the point's first host-only row says where the host's time goes: the Rust tokenizer's calls were timed
    split = rows[0]["host_split"]
    assert split["tokenizer_us"] > 0 and split["python_us"] > 0 and split["gil_ceiling_pairs_per_s"] > 0
    assert "host_split" not in rows[1]
    # compiled at two sizes before the timing: no graph compiled inside it
    assert rows[3]["speedup_vs_packed"] > 0 and rows[3]["graphs_compiled_timed"] == 0
    # the smoke shape's packed forward profiled, eager then compiled, its top ops timed
    assert [p["compiled"] for p in document["profile"]] == [False, True]
    assert all(p["top"] and p["top"][0]["ms_per_pass"] > 0 and p["tokens"] > 0 for p in document["profile"])


def test_target_rows_come_before_the_baselines(gpu_path, monkeypatch, tmp_path):
    """Every shape and point's target rows first, the padded baselines last: a run short of time loses a
    baseline, not a target's row."""
    speedlib = sys.modules["speedlib"]
    monkeypatch.setattr(speedlib, "matmul_peak", lambda dtype, n=None: 1e12)
    monkeypatch.setitem(speedlib.SHAPES, "smoke-wide", {**speedlib.SHAPES["smoke"], "hidden_size": 96})
    out = tmp_path / "gpu_path.json"
    args = ["--smoke", "--no-training", "--sweep-tokens", "--profile-shapes", "--shapes", "smoke", "smoke-wide",
            "--methods", "tinyrm-padded", "tinyrm-packed", "--output", str(out)]
    assert gpu_path.main(args) == 0
    rows = json.loads(out.read_text())["scoring"]
    targets = [("tinyrm-packed", shape, point) for shape in ("smoke", "smoke-wide") for point in ("64", "16-64")]
    assert [(r["method"], r["shape"], r["point"]) for r in rows] == targets + [
        ("tinyrm-padded", shape, point) for _, shape, point in targets]


def test_host_split_times_the_tokenizer_and_puts_things_back(gpu_path, tiny_modernbert):
    from tinyrm.inference import tokens

    gpu_lib = sys.modules["gpu_lib"]
    rm = RewardModel.from_pretrained(tiny_modernbert, device="cpu")
    rm.engine.config.recheck_margin = 0.0
    direct = tokens.rust_tokenizer
    pairs = gpu_lib.point_pairs(16, "16-64")
    one = [rm.encoder.encode("Which is larger, 3 or 5?", "5 is larger than 3.", "3, because it comes first.")]
    scored = rm.engine.choice_probs(one)  # P(choice 0) of one order: 0.5 with the forward removed
    split = gpu_lib.host_split(rm, pairs)
    assert split["pairs"] == 16 and split["tokenizer_us"] > 0 and split["python_us"] > 0
    assert tokens.rust_tokenizer is direct and rm.engine.config.overlap == "auto"
    assert rm.engine.choice_probs(one) == scored != [0.5]  # the forward is back


def test_profile_runs_the_forward_as_scoring_does(gpu_path, monkeypatch, tmp_path):
    """The profile times the graphs scoring ran: after a compiled row, its compiled pass compiles nothing new
    (outside inference mode the regions would see another kind of tensor and compile a second set)."""
    speedlib = sys.modules["speedlib"]
    monkeypatch.setattr(speedlib, "matmul_peak", lambda dtype, n=None: 1e12)
    out = tmp_path / "gpu_path.json"
    args = ["--smoke", "--methods", "tinyrm-packed-compiled", "--points", "64", "--no-training", "--sweep-tokens",
            "--profile-shapes", "smoke", "--output", str(out)]
    assert gpu_path.main(args) == 0
    document = json.loads(out.read_text())
    assert not document["errors"]
    assert [p["compiled"] for p in document["profile"]] == [False, True]
    assert document["scoring"][0]["method"] == "tinyrm-packed-compiled"
    assert [p["graphs_compiled"] for p in document["profile"]] == [0, 0]
    assert all(p["busy"] is None for p in document["profile"])  # one clock off CUDA: no busy share to read


def test_profiled_batch_fills_the_scoring_budget(gpu_path):
    """--profile-pairs 0 profiles a pass as scoring runs it: as many pairs, both orders, as the budget holds."""
    scoring, gpu_lib = sys.modules["gpu_scoring"], sys.modules["gpu_lib"]
    _, rm, _, _ = scoring.build_scorer("smoke", gpu_lib.synthetic_tokenizer(), 64, "4096", plain=False)
    pairs = gpu_lib.point_pairs(64, "16-64")
    rows = scoring._both_orders(rm, pairs, 0, budget=1000)
    n = len(rows) // 2
    assert sum(len(e.input_ids) for e in rows) <= 1000 < sum(
        len(rm.encode(*order).input_ids) for p, a, b in pairs[: n + 1] for order in ((p, a, b), (p, b, a)))
    assert rows[n].input_ids == rm.encode(pairs[0][0], pairs[0][2], pairs[0][1]).input_ids  # given orders first
    assert len(scoring._both_orders(rm, pairs, 5, budget=1)) == 10  # a count given: the budget is not read


def test_device_time_counts_each_kernel_once(gpu_path):
    """As kineto reports a CUDA step: an op holding the kernel it launched (its self device time), the kernel as
    an event of its own, the step's range on the host and mirrored on the device. The device's busy time is the
    kernels' (10 + 5 ms), not every event's self device time summed (which counted each kernel twice)."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import EventList, FunctionEvent

    def event(eid, name, start, end, device=DeviceType.CPU, **extra):
        return FunctionEvent(eid, name, thread=1, start_us=start, end_us=end, use_device="cuda", device_type=device,
                             stack=[], **extra)

    step = event(1, "ProfilerStep#1", 0, 40_000, is_user_annotation=True)
    mm, add = event(2, "aten::mm", 1_000, 2_000), event(3, "aten::add", 3_000, 3_500)
    mm.append_kernel("gemm", 0, 10_000)
    add.append_kernel("add_kernel", 0, 5_000)
    events = EventList([step, mm, add, event(4, "gemm", 5_000, 15_000, DeviceType.CUDA),
                        event(5, "add_kernel", 15_000, 20_000, DeviceType.CUDA),
                        event(6, "ProfilerStep#1", 0, 40_000, DeviceType.CUDA, is_user_annotation=True)],
                       use_device="cuda")
    events._build_tree()  # nests the host ops by their times, as the profiler does
    assert mm.cpu_parent is step
    prof = type("Prof", (), {"key_averages": lambda self: events.key_averages()})()
    found = sys.modules["gpu_lib"].top_events(prof, cuda=True, passes=1, top=5)
    assert found["ms_per_pass"] == pytest.approx(15.0) and found["wall_ms_per_pass"] == pytest.approx(40.0)
    assert found["busy"] == pytest.approx(15 / 40)
    assert [(t["name"], t["share"]) for t in found["top"]] == [("gemm", pytest.approx(2 / 3)),
                                                              ("add_kernel", pytest.approx(1 / 3))]


def test_executed_training_flops_match_flop_counter(gpu_path):
    """The executed count of a training step (2 of 4 layers frozen), with DoRA and in full, equals
    FlopCounterMode's count of one: eager attention (its matmuls counted), global layers only (FlopCounterMode
    sees no window)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    from tinyrm.backbone import BackboneConfig, prepare_for_training

    for rank in (8, 0):
        torch.manual_seed(0)
        mlm = ModernBertForMaskedLM(ModernBertConfig(
            vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
            max_position_embeddings=128, global_attn_every_n_layers=1, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, cls_token_id=1, sep_token_id=2))
        mlm.set_attn_implementation("eager")
        found = sys.modules["gpu_training"].executed_step_flops(mlm, [32, 32], freeze_layers=2, dora_rank=rank)
        model = prepare_for_training(mlm, BackboneConfig(dora_rank=rank, freeze_layers=2)).train()
        encoder = model.base_model.model.model if rank else model.model
        with FlopCounterMode(display=False) as counter:
            encoder(input_ids=torch.randint(3, 100, (2, 32))).last_hidden_state.sum().backward()
        # Within 2e-5: transformers 5.17 (the device image) builds the rotary table with one small bmm (512 FLOPs
        # here, 1.4e-5 of the step); 5.24 (the lock) does not. Exactly equal otherwise.
        assert found["matmul"] + found["attention"] == pytest.approx(counter.get_total_flops(), rel=2e-5), rank


def test_training_rows_are_profiled(gpu_path, monkeypatch, tmp_path):
    """Each training run's optimizer steps 1-2 are profiled through a global step hook, removed afterwards."""
    from torch.optim import optimizer

    speedlib = sys.modules["speedlib"]
    monkeypatch.setattr(speedlib, "matmul_peak", lambda dtype, n=None: 1e12)
    hooks = len(optimizer._global_optimizer_post_hooks)
    out = tmp_path / "gpu_path.json"
    args = ["--smoke", "--methods", "host-only", "--points", "64", "--host-workers", "1", "--sweep-tokens",
            "--profile-shapes", "--output", str(out)]
    assert gpu_path.main(args) == 0
    document = json.loads(out.read_text())
    trained = [row["attention"] for row in document["training"]]
    profiles = [p for p in document["profile"] if p.get("training")]
    assert trained and [p["training"] for p in profiles] == trained
    assert all(p["top"] and p["ms_per_pass"] > 0 and p["wall_ms_per_pass"] > 0 for p in profiles)
    assert len(optimizer._global_optimizer_post_hooks) == hooks


def test_ratios_hold_the_host_against_the_faster_packed_row(gpu_path):
    """The compiled row reads x tinyrm-packed; the host-only row is held against the faster of the two packed
    methods (the GPU rate it has to keep up with), at its own shape and point only."""
    def row(method, rate, point="512"):
        return {"shape": "base", "point": point, "method": method, "pairs_per_s": rate}

    rows = [row("hf-padded", 100.0), row("tinyrm-packed", 400.0), row("tinyrm-packed-compiled", 600.0),
            row("host-only", 1800.0), row("tinyrm-packed", 50.0, point="64-512")]
    sys.modules["gpu_scoring"]._ratios(rows, [])
    assert rows[2]["speedup_vs_packed"] == pytest.approx(1.5) and rows[2]["speedup_vs_hf"] == pytest.approx(6.0)
    assert rows[3]["host_vs_packed"] == pytest.approx(3.0) and rows[3]["speedup_vs_hf"] is None
    assert "speedup_vs_packed" not in rows[1]


def _device_run(device: str = "NVIDIA H200") -> dict:
    """A gpu_path document as a device run would write it (the rows the targets read)."""
    def row(shape, point, method, rate, mfu=None, host=None, workers=None, **extra):
        return {"shape": shape, "point": point, "method": method, "pairs_per_s": rate, "mfu_bf16": mfu,
                "host_vs_packed": host, "host_workers": workers, **extra}

    scoring = []
    for point, scale in (("512", 1.0), ("64-512", 1.8)):
        scoring += [row("base", point, "tinyrm-packed", 1100.0 * scale, mfu=0.33),
                    row("base", point, "tinyrm-packed-compiled", 1210.0 * scale, mfu=0.36, graphs_compiled_timed=0),
                    row("base", point, "host-only", 3000.0 * scale, host=2.5, workers=4),
                    row("base", point, "host-only", 4000.0 * scale, host=3.3, workers=8),
                    row("base", point, "tinyrm-padded", 1000.0 * scale, mfu=0.30),
                    row("large", point, "tinyrm-packed", 400.0 * scale, mfu=0.38),
                    row("large", point, "tinyrm-padded", 420.0 * scale, mfu=0.40)]
    training = [{"shape": "large", "attention": attention, "dora_rank": 128, "freeze_layers": 12, "length": 512,
                 "pairs_per_s": rate, "approx_mfu_bf16": mfu, "executed_mfu_bf16": 0.87 * mfu} for attention, rate, mfu
                in (("padded", 100.0, 0.20), ("packed", 99.0, 0.26))]
    sweep = [{"shape": "base", "point": "64-512", "max_batch_tokens": 65536, "pairs_per_s": 2100.0,
              "vs_auto_budget": 1.06}]
    profile = [{"shape": "base", "point": "512", "compiled": compiled, "busy": busy}
               for compiled, busy in ((False, 0.93), (True, 0.97))] + [{"training": "padded", "compiled": False}]
    return {"machine": {"device": device}, "scoring": scoring, "training": training, "sweep": sweep,
            "profile": profile}


def test_targets_read_the_device_run(gpu_path):
    """Each of issue 26's targets gets its figure from the right row and a verdict against its threshold; a
    target without rows is unmeasured, never met."""
    targets = sys.modules["gpu_targets"]
    found = {t["target"]: t for t in targets.targets(_device_run())}
    base = found["scoring MFU bf16, base, 512 tokens"]
    assert (base["figure"], base["verdict"], base["source"]) == (0.36, "met", "tinyrm-packed-compiled")
    assert found["scoring MFU bf16, large, 64-512 tokens"]["verdict"] == "NOT met"  # 38% < 40%; padded rows not read
    rate = found["scoring pairs/s, base, 512 tokens (4x the old H200 runs)"]
    assert rate["figure"] == 1210.0 and rate["threshold"] == pytest.approx(4 * 259.6) and rate["verdict"] == "met"
    assert rate["source"] == "tinyrm-packed-compiled; 1.21x tinyrm-padded in this run"
    h100 = {t["target"]: t for t in targets.targets(_device_run("NVIDIA H100 80GB HBM3"))}[rate["target"]]
    assert h100["verdict"] == "met (cross-card: the old runs were on an H200, this one on NVIDIA H100 80GB HBM3)"
    train = found["training MFU bf16, large DoRA r128, 12 frozen, 512 tokens"]
    assert (train["figure"], train["verdict"]) == (0.26, "met")  # the count the issue's 12% was read with
    assert train["source"] == "packed step (executed FLOPs: 22.6%)"
    host = found["host-only / packed pairs/s, base, 512 tokens"]  # the default threads' row decides
    assert (host["figure"], host["verdict"]) == (2.5, "NOT met") and "8 threads: 3.30x" in host["source"]
    assert found["host-only / packed pairs/s, large, 512 tokens"]["verdict"] == "unmeasured"
    table = targets.report({"targets": list(found.values()), "decisions": targets.decisions(_device_run())})
    assert "| scoring MFU bf16, base, 512 tokens | 36.0% | 30.0% | met | tinyrm-packed-compiled |" in table


def test_decisions_read_the_device_run(gpu_path):
    """The defaults the run decides: a ratio within 3% of 1 keeps the default, a clear loss or win changes it;
    a run off the GPU decides nothing."""
    targets = sys.modules["gpu_targets"]
    found = {d["decision"]: d["outcome"] for d in targets.decisions(_device_run())}
    assert found["attention='auto' scores packed on CUDA"].startswith("change")  # large: packed 0.95x padded
    assert found["compile stays off by default"].startswith("change")  # 1.10x at every measured cell
    assert found["the 'auto' token budget"].startswith("change")  # a 65,536-token row 1.06x auto
    assert found["attention='auto' trains packed on CUDA (varlen_attn has a backward)"] == "stands"  # 0.99x: a tie
    assert found["CUDA graphs stay unused"] == "stands"  # the eager pass idles 7% (< 10%); compiled rows not read
    run = _device_run()
    run["profile"][0]["busy"] = 0.85
    graphs = next(d for d in targets.decisions(run) if d["decision"] == "CUDA graphs stay unused")
    assert graphs["outcome"].startswith("change") and graphs["evidence"] == "base 512 eager busy 85%"
    for row in run["scoring"]:
        if row["method"] == "tinyrm-packed-compiled":
            row["graphs_compiled_timed"] = 2  # it recompiled inside the timing: no default earned
    outcomes = {d["decision"]: d["outcome"] for d in targets.decisions(run)}
    assert outcomes["compile stays off by default"] == "stands"
    cpu = _device_run("cpu")
    assert {t["verdict"] for t in targets.targets(cpu)} <= {"unmeasured", "unmeasured (not a GPU run)"}
    assert {d["outcome"] for d in targets.decisions(cpu)} == {"unmeasured (not a GPU run)"}
