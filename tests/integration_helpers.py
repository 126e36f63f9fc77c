"""Tiny local models for the integration tests (TRL trainers, the rerank API, the docs snippets).

Nothing is downloaded: the reward model is a 2-layer random BERT on the embedded MiniLM tokenizer, the
policy a 2-layer random Llama on a byte-level BPE tokenizer trained here in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def save_opinionated_bert(directory: Path) -> str:
    """A random BERT masked LM initialised with a wide spread (std 0.5), so its P(a better) range roughly
    0.1-0.9 on different texts instead of 0.5 +- 1e-4: rankings and scores then differ visibly."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from tinyrm.backbone import default_model_path

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, pad_token_id=tokenizer.pad_token_id, max_position_embeddings=512,
                        initializer_range=0.5)
    BertForMaskedLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def save_tiny_causal_lm(directory: Path) -> str:
    """A 2-layer random Llama (hidden size 32) with a byte-level BPE tokenizer: pad, eos and a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = ["What is 2 + 2? It is 4.", "Name a colour. Blue, or a deep green.",
              "The quick brown fox jumps over the lazy dog."] * 4
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="<eos>")
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=256, tie_word_embeddings=True, **ids))
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)
