"""Conversational SFT: masked-LM training on text/messages rows; output trains as a reward model."""

import json

import pytest
import torch

from tinyrm.cli import main
from tinyrm.data import DataError
from tinyrm.errors import UsageError, UserError
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
    bad.write_text('{"messages": [{"role": null, "content": "Hi."}, {"role": 3, "content": "x"}]}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: messages\[1\]: 'role' must be a string, got int"):
        read_texts([str(bad)])
    bad.write_text('{"messages": [{"role": null, "content": "Hi."}]}\n')
    assert read_texts([str(bad)]) == ["User: Hi."]  # a null role is the user, not "None"


def test_a_long_text_is_cut_into_windows_not_truncated():
    from transformers import AutoTokenizer

    from tinyrm.backbone import default_model_path
    from tinyrm.tools.sft import TextDataset

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    texts = [" ".join(f"w{i}" for i in range(300)), "a short one"]
    dataset = TextDataset(texts, tokenizer, max_length=64)
    assert dataset.split_texts == 1 and all(len(row["input_ids"]) <= 64 for row in dataset.rows)
    body = [t for row in dataset.rows
            for t, special in zip(row["input_ids"], row["special_tokens_mask"]) if not special]
    assert body == [t for text in texts for t in tokenizer(text, add_special_tokens=False)["input_ids"]]  # nothing lost


def test_sft_changes_weights_and_output_trains(tiny_modernbert, pairs_file, tmp_path):
    from transformers import AutoModelForMaskedLM

    out = tmp_path / "sft"
    result = sft(SFTConfig(model=tiny_modernbert, data=[str(_conversations(tmp_path / "c.jsonl"))],
                           output=str(out), batch_size=4, micro_batch_size=4, max_steps=3, max_length=64, lr=1e-3,
                           precision="fp32"))
    assert result.steps == 3 and result.final_loss is not None and result.final_loss > 0
    assert result.texts == result.sequences == 12
    before = AutoModelForMaskedLM.from_pretrained(tiny_modernbert).state_dict()
    after = AutoModelForMaskedLM.from_pretrained(str(out)).state_dict()
    assert any(not torch.allclose(before[k], after[k]) for k in before if before[k].is_floating_point())
    # The SFT output is a valid --model for tinyrm train.
    code = main(["train", "--model", str(out), "--data", str(pairs_file), "--output", str(tmp_path / "rm"),
                 "--batch-size", "4", "--micro-batch-size", "4", "--max-steps", "1", "--max-length", "96",
                 "--save-steps", "0"])
    assert code == 0 and (tmp_path / "rm" / "tinyrm.json").is_file()


def test_bad_settings_fail_before_or_instead_of_saving(tiny_modernbert, tmp_path):
    data = [str(_conversations(tmp_path / "c.jsonl"))]
    with pytest.raises(UsageError, match="--max-length 5000 exceeds the model's"):
        sft(SFTConfig(model=tiny_modernbert, data=data, output=str(tmp_path / "a"), max_length=5000))
    # A diverged run (a huge learning rate) stops with why; no NaN weights are saved.
    with pytest.raises(UserError, match="training diverged: the MLM loss is nan"):
        sft(SFTConfig(model=tiny_modernbert, data=data, output=str(tmp_path / "b"), batch_size=4, micro_batch_size=4,
                      max_steps=4, max_length=64, lr=1e8, precision="fp32"))
    assert not (tmp_path / "b" / "sft.json").exists() and not list((tmp_path / "b").glob("*.safetensors"))
    for option, flag in (({"epochs": 0}, "--epochs"), ({"max_steps": 0}, "--max-steps")):  # nothing trained
        with pytest.raises(UsageError, match=flag):
            sft(SFTConfig(model=tiny_modernbert, data=data, output=str(tmp_path / "c"), **option))
    assert not (tmp_path / "c").exists()
