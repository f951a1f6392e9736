"""Models and text for the quantization policy: the shipped tiny byte-level LM on the stdlib corpus,
or any local Hugging Face causal or masked LM, behind one `LanguageModel` wrapper. Never downloads anything."""

from .corpus import Corpus, default_corpus
from .evaluate import masked_positions, perplexity, sequence_loss, token_sequences, unigram_perplexity, window_losses
from .lm import (TASKS, CausalLM, LanguageModel, default_task, load_default_model, load_hf_causal_lm, load_hf_model,
                 load_model, pick_device, read_text)
from .tiny_lm import TinyLM, TinyLMConfig

__all__ = [
    "Corpus", "default_corpus", "masked_positions", "perplexity", "sequence_loss", "token_sequences",
    "unigram_perplexity", "window_losses", "TASKS", "CausalLM", "LanguageModel", "default_task", "load_default_model",
    "load_hf_causal_lm", "load_hf_model", "load_model", "pick_device", "read_text",
    "TinyLM", "TinyLMConfig",
]
