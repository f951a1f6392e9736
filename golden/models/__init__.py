"""Models and text for the quantization policy: the shipped tiny byte-level LM on the stdlib corpus,
or any local Hugging Face causal LM, behind one `CausalLM` wrapper. Never downloads anything."""

from .corpus import Corpus, default_corpus
from .evaluate import perplexity, sequence_loss, token_sequences, unigram_perplexity
from .lm import CausalLM, load_default_model, load_hf_causal_lm, load_model, pick_device, read_text
from .tiny_lm import TinyLM, TinyLMConfig

__all__ = [
    "Corpus", "default_corpus", "perplexity", "sequence_loss", "token_sequences", "unigram_perplexity",
    "CausalLM", "load_default_model", "load_hf_causal_lm", "load_model", "pick_device", "read_text",
    "TinyLM", "TinyLMConfig",
]
