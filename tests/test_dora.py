"""tinyrm.dora: DoRA's fused forward computes peft's function (outputs and every gradient), and only replaces it."""

import copy
import shutil

import pytest
import torch
from peft.tuners.lora.variants import DoraLinearVariant

from tinyrm.backbone import BackboneConfig, load_mlm, load_saved_backbone, prepare_for_training
from tinyrm.dora import FusedDoraLinearVariant, fuse_dora
from tinyrm.training.config import TrainConfig, backbone_config, recorded_options


def _variants(model) -> list:
    return [v for m in model.modules() for v in getattr(m, "lora_variant", {}).values()]


def _dora(path: str, forward: str, dropout: float = 0.0, seed: int = 0, base_too: bool = True,
          dtype: torch.dtype = torch.float32):
    """A DoRA model whose every term counts: B != 0, magnitudes != the weight norms, scaling alpha / r = 2, and
    biases that are not zero (transformers initialises them to zero; ``base_too=False`` keeps the backbone's
    weights as saved in ``path``)."""
    _, mlm = load_mlm(path)
    settings = BackboneConfig(dora_rank=4, dora_alpha=8, freeze_layers=1, dora_forward=forward, dora_dropout=dropout)
    model = prepare_for_training(mlm.to(dtype), settings)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if base_too or param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator).to(param.dtype))
    return model


def _step(model, ids, mask, bf16: bool = False):
    """Logits and every trainable parameter's gradient of one training step (fixed dropout draws)."""
    model.train()
    model.zero_grad()
    torch.manual_seed(1)
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=ids, attention_mask=mask).logits
    logits.float().pow(2).mean().backward()
    return logits.float().detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _inputs(vocab: int):
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(5, vocab, (3, 24), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0  # a padded row
    return ids, mask


def test_the_fused_forward_is_installed_by_default_and_on_request_only(tiny_model):
    fused = _dora(tiny_model, "fused")
    peft = _dora(tiny_model, "peft")
    assert _variants(fused) and all(type(v) is FusedDoraLinearVariant for v in _variants(fused))
    assert _variants(peft) and all(type(v) is DoraLinearVariant for v in _variants(peft))
    assert fuse_dora(fused) == 0  # idempotent
    assert fuse_dora(peft) == len(_variants(peft))
    with pytest.raises(ValueError, match="dora_forward"):
        prepare_for_training(load_mlm(tiny_model)[1], BackboneConfig(dora_rank=4, dora_forward="triton"))


def test_fused_equals_peft_in_fp32(tiny_model):
    """ModernBERT (no biases) and BERT (biases: the (1 - s) * bias term): logits and every gradient,
    the magnitudes' included, as peft's forward gives them; in eval mode too."""
    peft = _dora(tiny_model, "peft")
    fused = copy.deepcopy(peft)
    assert fuse_dora(fused) > 0
    ids, mask = _inputs(peft.get_input_embeddings().num_embeddings)
    logits, grads = _step(peft, ids, mask)
    fused_logits, fused_grads = _step(fused, ids, mask)
    assert sorted(fused_grads) == sorted(grads) and any("magnitude" in n for n in grads)
    torch.testing.assert_close(fused_logits, logits, rtol=1e-5, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    peft.eval()
    fused.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(input_ids=ids, attention_mask=mask).logits,
                                   peft(input_ids=ids, attention_mask=mask).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (the device run's CUDA gate)"))])
def test_fused_is_as_close_to_fp32_as_peft_under_bf16_autocast(tiny_model, device):
    """The fused ops run in the activations' dtype (bf16) where peft's ran in float32: its error against the
    fp32 step stays that of peft's own bf16 step (on a GPU too: the device run's ``-k cuda`` gate)."""
    peft = _dora(tiny_model, "peft").to(device)
    fused = copy.deepcopy(peft)
    fuse_dora(fused)
    ids, mask = (x.to(device) for x in _inputs(peft.get_input_embeddings().num_embeddings))
    reference, reference_grads = _step(peft, ids, mask)
    for_peft, peft_grads = _step(peft, ids, mask, bf16=True)
    for_fused, fused_grads = _step(fused, ids, mask, bf16=True)

    def grad_error(grads) -> float:
        return max(((grads[n] - g).norm() / g.norm()).item() for n, g in reference_grads.items())

    assert (for_fused - reference).abs().max() <= 1.5 * (for_peft - reference).abs().max() + 1e-3
    assert grad_error(fused_grads) <= 1.5 * grad_error(peft_grads) + 1e-3


def test_a_bf16_backbone_under_float32_adapters(tiny_modernbert):
    """peft keeps adapters in float32 on a bf16 backbone: without autocast the fused forward runs in the base
    layer's dtype (where peft's result ends), within bf16 rounding of peft's."""
    peft = _dora(tiny_modernbert, "peft", dtype=torch.bfloat16)
    assert {p.dtype for p in peft.parameters() if p.requires_grad} == {torch.float32}
    fused = copy.deepcopy(peft)
    fuse_dora(fused)
    ids, mask = _inputs(peft.get_input_embeddings().num_embeddings)
    logits, grads = _step(peft, ids, mask)
    fused_logits, fused_grads = _step(fused, ids, mask)
    torch.testing.assert_close(fused_logits, logits, rtol=2e-2, atol=2e-2)
    for name, grad in grads.items():
        assert ((fused_grads[name] - grad).norm() / grad.norm()) < 5e-2, name


def test_dropout_in_training_keeps_peft_forward(tiny_bert):
    """With adapter dropout peft runs the base matmul again on the dropped input: the fused form does not apply,
    so the layer hands the call back to peft (same draws, same numbers)."""
    peft = _dora(tiny_bert, "peft", dropout=0.2)
    fused = copy.deepcopy(peft)
    fuse_dora(fused)
    ids, mask = _inputs(peft.get_input_embeddings().num_embeddings)
    logits, grads = _step(peft, ids, mask)
    fused_logits, fused_grads = _step(fused, ids, mask)
    torch.testing.assert_close(fused_logits, logits, rtol=0, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=0, atol=0)


def test_saved_adapters_load_fused_and_merge_as_before(tiny_modernbert, tmp_path):
    """Saving is peft's (nothing of the fused forward is written); a loaded adapter runs fused; merging the
    fused model gives the function its forward computes."""
    model = _dora(tiny_modernbert, "fused", base_too=False)
    saved = shutil.copytree(tiny_modernbert, tmp_path / "model")  # the backbone's weights: DoRA leaves them
    model.save_pretrained(saved / "adapter")
    _, loaded = load_saved_backbone(saved, "adapter")
    assert all(type(v) is FusedDoraLinearVariant for v in _variants(loaded))
    ids, mask = _inputs(model.get_input_embeddings().num_embeddings)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        live = model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask).logits, live, rtol=1e-5, atol=1e-5)
        merged = copy.deepcopy(model).merge_and_unload()
        torch.testing.assert_close(merged(input_ids=ids, attention_mask=mask).logits, live, rtol=1e-4, atol=1e-4)


def test_dora_forward_is_a_runtime_option():
    config = TrainConfig(dora_rank=8, freeze_layers=2, dora_forward="peft")
    assert "dora_forward" not in recorded_options(config)
    settings = backbone_config(config)
    assert (settings.dora_rank, settings.freeze_layers, settings.dora_forward) == (8, 2, "peft")
