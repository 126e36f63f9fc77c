"""Conversational SFT: masked-LM training on text/messages rows; output trains as a reward model."""

import json

import pytest
import torch

from tinyrm.cli import main
from tinyrm.data import DataError
from tinyrm.tools.sft import SFTConfig, read_texts, sft


def _conversations(path):
    rows = [{"text": f"User asked about topic {i}. The assistant answered politely and at length."} for i in range(6)]
    rows += [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                           {"role": "assistant", "content": f"It is {2 * i}."}]} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_read_texts_formats_and_errors(tmp_path):
    texts = read_texts([str(_conversations(tmp_path / "c.jsonl"))])
    assert len(texts) == 12 and texts[6] == "User: What is 0 + 0?\n\nAssistant: It is 0."
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"messages": [{"role": "user"}]}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: messages\[0\] needs a string 'content'"):
        read_texts([str(bad)])
    bad.write_text('{"other": 1}\n')
    with pytest.raises(DataError, match="bad.jsonl:1: row has no non-empty 'text'"):
        read_texts([str(bad)])


def test_sft_changes_weights_and_output_trains(tiny_modernbert, pairs_file, tmp_path):
    from transformers import AutoModelForMaskedLM

    out = tmp_path / "sft"
    result = sft(SFTConfig(model=tiny_modernbert, data=[str(_conversations(tmp_path / "c.jsonl"))],
                           output=str(out), batch_size=4, micro_batch_size=4, max_steps=3, max_length=64, lr=1e-3,
                           precision="fp32"))
    assert result.steps == 3 and result.final_loss is not None and result.final_loss > 0
    before = AutoModelForMaskedLM.from_pretrained(tiny_modernbert).state_dict()
    after = AutoModelForMaskedLM.from_pretrained(str(out)).state_dict()
    assert any(not torch.allclose(before[k], after[k]) for k in before if before[k].is_floating_point())
    # The SFT output is a valid --model for tinyrm train.
    code = main(["train", "--model", str(out), "--data", str(pairs_file), "--output", str(tmp_path / "rm"),
                 "--batch-size", "4", "--micro-batch-size", "4", "--max-steps", "1", "--max-length", "96",
                 "--save-steps", "0"])
    assert code == 0 and (tmp_path / "rm" / "tinyrm.json").is_file()
