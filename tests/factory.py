"""Small Hugging Face model folders made offline for tests: a base and fine-tunes made by adding task vectors.

Real architectures (Mistral, Llama) with tiny sizes, saved exactly as from_pretrained expects (config.json,
safetensors, optionally sharded, a fast tokenizer with a chat template), so every code path sees real checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

CHARS = list("0123456789+-=: abcdefghijklmnopqrstuvwxyz答え一二三四五六七八九十")
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


@dataclass
class TinyFamily:
    base: Path
    experts: list[Path]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_config(arch: str = "mistral", *, vocab_size: int = 96, hidden: int = 32, layers: int = 2):
    common = dict(  # noqa: C408 (keyword form reads as a config)
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    if arch == "mistral":
        return MistralConfig(**common)
    if arch == "llama":
        return LlamaConfig(**common)
    raise ValueError(f"unknown tiny architecture {arch!r}")


def _save(model, path: Path, dtype: torch.dtype, shard: str | None) -> Path:
    model = model.to(dtype)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(path, **kwargs)
    tiny_tokenizer().save_pretrained(path)
    return path


def make_family(
    root: Path,
    *,
    arch: str = "mistral",
    n_experts: int = 2,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    scale: float = 0.02,
    vocab_size: int = 96,
    hidden: int = 32,
    layers: int = 2,
    shard: str | None = None,
) -> TinyFamily:
    """A base and `n_experts` fine-tunes: expert_i = base + τ_i, with τ_i Gaussian (std `scale`), and a share of
    entries of each τ_i zeroed and sign-flipped across experts so sign conflicts and sparsity are real."""
    root = Path(root)
    torch.manual_seed(seed)
    config = tiny_config(arch, vocab_size=vocab_size, hidden=hidden, layers=layers)
    cls = MistralForCausalLM if arch == "mistral" else LlamaForCausalLM
    base = cls(config)
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    _save(base, root / "base", dtype, shard)
    experts = []
    gen = torch.Generator().manual_seed(seed + 1)
    for i in range(n_experts):
        expert = cls(config)
        state = {}
        for name, w in base_state.items():
            tau = torch.randn(w.shape, generator=gen) * scale
            tau[torch.rand(w.shape, generator=gen) < 0.3] = 0.0
            state[name] = w + tau
        expert.load_state_dict(state)
        experts.append(_save(expert, root / f"expert{i}", dtype, shard))
    return TinyFamily(base=root / "base", experts=experts)


def declared_recipe(method, base: str, experts: list[str]):
    """A recipe for `method` (a registry Method) from its declaration alone, so that methods added later are covered
    too: two inputs where it takes two, required per-model values 0.6 / 0.4, density 0.5, required global values 0.3.
    (tests/test_live.py and bench/output_hashes.py.)"""
    from merging.recipe import Recipe

    count = 2 if method.max_models is None or method.max_models >= 2 else method.max_models
    models = []
    for index, expert in enumerate(experts[:count]):
        own = {p.name: (0.6, 0.4)[index] for p in method.params if p.scope == "model" and p.required}
        own.update({p.name: 0.5 for p in method.params if p.scope == "model" and p.name == "density"})
        models.append({"model": expert, **({"parameters": own} if own else {})})
    data = {"merge_method": method.name, "models": models}
    if method.base != "ignored":
        data["base_model"] = base
    shared = {p.name: 0.3 for p in method.params if p.scope == "global" and p.required}
    if shared:
        data["parameters"] = shared
    return Recipe.from_dict(data)
