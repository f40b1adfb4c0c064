"""Tiny Hugging Face models and a word-level tokenizer, saved with ``save_pretrained``: nothing is downloaded.

Every model is a random-config toy (2 layers, hidden 16-32) built with a fixed seed; the
tokenizer knows ``WORDS`` and pads with ``[PAD]`` (id 0).
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("the cat sat on a mat dog ran to park bird sang in tree fish swam sea sun shone over hill "
         "red blue green small big old new quick slow happy").split()
SPECIAL = ("[PAD]", "[UNK]", "[BOS]", "[EOS]", "[CLS]", "[SEP]", "[MASK]")
VOCAB = {token: index for index, token in enumerate((*SPECIAL, *WORDS))}
PAD_ID = VOCAB["[PAD]"]

#: eight lines of different lengths: padding is real in every batch of them
TEXT_LINES = ("the cat sat on a mat", "a dog ran to the park", "the bird sang", "fish swam in the blue sea",
              "the sun shone over the green hill", "a small red bird", "the quick old dog sat",
              "happy fish")


def real_tokens(lines=TEXT_LINES) -> int:
    """Real (unpadded) tokens of the lines under the word-level tokenizer (no special tokens added)."""
    return sum(len(line.split()) for line in lines)


def save_tokenizer(folder: Path, inputs: tuple[str, ...] = ("input_ids", "attention_mask")) -> None:
    """A word-level tokenizer (``tokenizers``) saved as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(dict(VOCAB), unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                        bos_token="[BOS]", eos_token="[EOS]", cls_token="[CLS]", sep_token="[SEP]",
                                        mask_token="[MASK]", model_input_names=list(inputs))
    tokenizer.save_pretrained(str(folder))


def save_text(path: Path, lines=TEXT_LINES) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _common() -> dict:
    return {"vocab_size": len(VOCAB), "pad_token_id": PAD_ID, "bos_token_id": VOCAB["[BOS]"],
            "eos_token_id": VOCAB["[EOS]"]}


def opt(dead_units: int = 7):
    """A 2-layer OPT (ReLU FFN, 32 units) whose first layer has ``dead_units`` units killed by fc1's bias."""
    from transformers import OPTConfig, OPTModel

    torch.manual_seed(0)
    config = OPTConfig(hidden_size=16, num_hidden_layers=2, ffn_dim=32, num_attention_heads=2,
                       max_position_embeddings=64, word_embed_proj_dim=16, activation_function="relu", **_common())
    model = OPTModel(config).eval()
    with torch.no_grad():
        model.decoder.layers[0].fc1.bias[:dead_units] = -1000.0
    return model


def bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                max_position_embeddings=64, hidden_act="gelu", **_common())).eval()


def gpt2():
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    return GPT2Model(GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=64, activation_function="gelu_new",
                                **_common())).eval()


def t5():
    from transformers import T5Config, T5Model

    torch.manual_seed(0)
    return T5Model(T5Config(d_model=16, d_ff=32, d_kv=8, num_layers=2, num_heads=2, feed_forward_proj="relu",
                            decoder_start_token_id=PAD_ID, **_common())).eval()


def llama():
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    return LlamaModel(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  num_key_value_heads=2, max_position_embeddings=64, hidden_act="silu",
                                  **_common())).eval()


BUILDERS = {"opt": opt, "bert": bert, "gpt2": gpt2, "t5": t5, "llama": llama}


def save_model_folder(folder: Path, name: str) -> Path:
    """``save_pretrained`` of one tiny model plus the tokenizer, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    BUILDERS[name]().save_pretrained(str(folder))
    save_tokenizer(folder, ("input_ids", "token_type_ids", "attention_mask") if name == "bert"
                   else ("input_ids", "attention_mask"))
    return folder
