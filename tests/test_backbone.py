import re

import pytest
import torch
from transformers import RobertaConfig, RobertaForMaskedLM

from tinyrm.backbone import (
    BackboneConfig,
    find_layers,
    load_mlm,
    mask_logits,
    parameter_counts,
    position_limit,
    prepare_for_training,
    unwrap_peft,
)


def test_mask_logits_match_full_forward(tiny_model):
    tokenizer, mlm = load_mlm(tiny_model)
    mlm.eval()
    enc = tokenizer(["hello there [MASK] friend", "a [MASK] b c d e"], padding=True, return_tensors="pt")
    positions = (enc["input_ids"] == tokenizer.mask_token_id).nonzero()[:, 1]
    rows = torch.arange(2)
    with torch.no_grad():
        full = mlm(**enc).logits[rows, positions]
        fast = mask_logits(mlm, enc["input_ids"], enc["attention_mask"], positions,
                           token_type_ids=enc.get("token_type_ids"))
        ids = torch.tensor([15, 16])
        two = mask_logits(mlm, enc["input_ids"], enc["attention_mask"], positions, token_ids=ids,
                          token_type_ids=enc.get("token_type_ids"))
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(two, full[:, ids], atol=1e-5, rtol=1e-5)


def test_freeze_marks_embeddings_and_lowest_layers(tiny_model):
    _, mlm = load_mlm(tiny_model)
    model = prepare_for_training(mlm, BackboneConfig(freeze_layers=1))
    _, layers = find_layers(model)
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for p in layers[1].parameters())
    assert not model.get_input_embeddings().weight.requires_grad
    trainable, total = parameter_counts(model)
    assert 0 < trainable < total


def test_freeze_zero_is_full_finetuning(tiny_model):
    _, mlm = load_mlm(tiny_model)
    model = prepare_for_training(mlm, BackboneConfig(freeze_layers=0))
    trainable, total = parameter_counts(model)
    assert trainable == total


def test_freeze_too_many_layers_is_an_error(tiny_model):
    _, mlm = load_mlm(tiny_model)
    with pytest.raises(ValueError, match="only 2 layers"):
        prepare_for_training(mlm, BackboneConfig(freeze_layers=5))


@pytest.mark.parametrize("rank", [4, 8])
def test_dora_rank_reaches_the_adapter_on_unfrozen_layers_only(tiny_model, rank):
    _, mlm = load_mlm(tiny_model)
    model = prepare_for_training(mlm, BackboneConfig(dora_rank=rank, freeze_layers=1))
    config = model.peft_config["default"]
    assert config.r == rank and config.use_dora
    adapted = [n for n, _ in model.named_modules() if n.endswith("lora_A.default")]
    assert adapted, "no adapter was injected"
    for name, module in model.named_modules():
        if name.endswith("lora_A.default"):
            assert module.weight.shape[0] == rank
    layer_ids = {int(re.search(r"layers?\.(\d+)\.", n).group(1)) for n in adapted}
    assert layer_ids == {1}  # adapters only on the unfrozen layer
    magnitudes = [n for n, _ in model.named_parameters() if "lora_magnitude_vector" in n]
    assert magnitudes, "DoRA magnitude vectors missing"
    base = unwrap_peft(model)
    assert base is not model


def test_default_model_warns_once_about_initialised_head():
    import warnings

    from tinyrm import backbone

    backbone._warned_heads.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, mlm = load_mlm("default")
        load_mlm("default")
    messages = [str(w.message) for w in caught if "MLM-head" in str(w.message)]
    assert len(messages) == 1 and mlm.tinyrm_initialised_head


def test_dora_trains_an_initialised_head_but_not_the_tied_decoder():
    _, mlm = load_mlm("default")
    model = prepare_for_training(mlm, BackboneConfig(dora_rank=4, freeze_layers=2))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("predictions.transform.modules_to_save" in n for n in trainable)
    assert not any("decoder" in n or "embeddings" in n for n in trainable)


def test_a_missing_head_is_the_same_at_every_load_and_leaves_the_global_rng_alone():
    """A zero-shot model (a checkpoint without an MLM head) scores alike at every load; a trainer that seeded
    the global RNG (``head_seed=None``) gets a head that follows its seed."""
    def head(mlm) -> torch.Tensor:  # the first initialised tensor that is drawn at random
        state = mlm.state_dict()
        return next(state[k].clone() for k in mlm.tinyrm_initialised_keys if state[k].std() > 0)

    torch.manual_seed(1)
    before = torch.rand(1)
    torch.manual_seed(1)
    first, second = head(load_mlm("default")[1]), head(load_mlm("default")[1])
    assert torch.equal(first, second)
    assert torch.equal(torch.rand(1), before)  # loading drew nothing from the caller's RNG
    seeded = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        seeded.append(head(load_mlm("default", head_seed=None)[1]))
    assert torch.equal(seeded[0], seeded[1]) and not torch.equal(seeded[0], seeded[2])


def test_max_length_beyond_the_position_table_is_refused_up_front(tiny_bert, pairs_file, tmp_path):
    """Was accepted, then ``IndexError: index out of range`` at the first input that long (scoring, or hours
    into training on data with long rows); tiny_bert has 1,024 positions."""
    from tinyrm import RewardModel
    from tinyrm.errors import UsageError
    from tinyrm.train import TrainConfig, train

    assert RewardModel.from_pretrained(tiny_bert, max_length=1024).encoder.max_length == 1024
    with pytest.raises(UsageError, match="max_length 1025 exceeds the model's 1024 positions"):
        RewardModel.from_pretrained(tiny_bert, max_length=1025)
    with pytest.raises(UsageError, match="exceeds the model's 1024 positions"):
        train(TrainConfig(model=tiny_bert, data=[str(pairs_file)], output=str(tmp_path / "out"), max_length=2048,
                          max_steps=1, save_steps=0))
    assert not (tmp_path / "out" / "model.safetensors").exists()
    roberta = RobertaForMaskedLM(RobertaConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                               num_attention_heads=2, intermediate_size=8, pad_token_id=1,
                                               max_position_embeddings=66))
    assert position_limit(roberta) == 64  # its positions start after the padding index
