"""Every Python block and the curl example of docs/integrations.md run, as written, on tiny local stand-ins.

The substitutions are the only edits: the named policy and reward model become tiny random ones, the
runs go to a temporary folder and last one step on the CPU, and the server URL is a loopback test server
(whose API key is the docs' "KEY"). Each substitution must still match the page, so an edited page that
slips past them fails here rather than going untested.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tinyrm.serving.app import ServeConfig

from .integration_helpers import save_opinionated_bert, save_tiny_causal_lm
from .test_serve import running_server

DOC = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"
URL = "http://127.0.0.1:8000"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(encoding="utf-8"), flags=re.S | re.M)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    from tinyrm import load

    rm_path = save_opinionated_bert(tmp_path_factory.mktemp("docs-rm"))
    policy = save_tiny_causal_lm(tmp_path_factory.mktemp("docs-policy"))
    with running_server(load(rm_path), ServeConfig(api_key="KEY", max_wait_ms=1)) as url:
        yield {"rm": rm_path, "policy": policy, "url": url}


def substitutions(stand_ins, tmp_path) -> dict[str, str]:
    return {
        '"runs/demo/model"': repr(stand_ins["rm"]),
        '"Qwen/Qwen2.5-0.5B-Instruct"': repr(stand_ins["policy"]),
        'output_dir="runs/': f'output_dir="{tmp_path}/',
        "max_steps=100": 'max_steps=1, use_cpu=True, bf16=False, save_strategy="no"',
        "max_completion_length=128": "max_completion_length=8",
        "max_new_tokens=128": "max_new_tokens=8",
        URL: stand_ins["url"],
    }


def test_python_blocks_run(stand_ins, tmp_path, capsys):
    pytest.importorskip("trl")
    pytest.importorskip("cohere")
    code = blocks("python")
    assert len(code) == 5, "a block was added or removed: check that this test still runs it"
    table = substitutions(stand_ins, tmp_path)
    used = set()
    for i, block in enumerate(code):
        for old, new in table.items():
            if old in block:
                used.add(old)
                block = block.replace(old, new)
        exec(compile(block, f"{DOC.name} python block {i + 1}", "exec"), {"__name__": f"docs_block_{i + 1}"})
    assert used == set(table), f"no longer on the page: {set(table) - used}"
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]  # not the trainers' logs
    assert len(printed) == 3  # GRPO's logged reward spreads, the served reward, the Cohere results
    assert len(json.loads(printed[0])) == 1  # one step, one log line with the reward's std
    assert "'comparisons': 3, 'calls': 2" in printed[1]
    results = ast.literal_eval(printed[2])  # [(index, score), (index, score)]
    assert len(results) == 2 and results[0][1] >= results[1][1]


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl")
def test_curl_example_runs(stand_ins):
    (command,) = blocks("bash")
    out = subprocess.run(["bash", "-c", command.replace(URL, stand_ins["url"])], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    body = json.loads(out)
    assert [set(r) for r in body["results"]] == [{"index", "relevance_score", "document"}] * 2
    assert body["results"][0]["relevance_score"] >= body["results"][1]["relevance_score"]
