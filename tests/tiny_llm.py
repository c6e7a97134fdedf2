"""A tiny random Llama + byte-level BPE tokenizer saved with save_pretrained: exercises the real
Hugging Face loading code in a second, offline."""

from __future__ import annotations

import torch

WORDS = ("cat dog bird fish horse car truck plane boat tree flower house road sky water "
         "red green blue small big photo of a the is it input output").split()
CORPUS = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(12)) for i in range(200)]
CHOICES = [" cat", " cat food", " dog", " dog house red", " bird"]


def save_tiny_llama(folder) -> None:
    """A 2-layer random Llama and a byte-level BPE tokenizer that starts encodings with <bos>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(CORPUS, trainer)
    raw.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[
        ("<bos>", raw.token_to_id("<bos>"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>",
                                        eos_token="<eos>", pad_token="<pad>")
    tokenizer.save_pretrained(folder)

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, initializer_range=0.3,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
