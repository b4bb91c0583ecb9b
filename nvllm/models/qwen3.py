"""Qwen3: the Llama decoder with RMSNorm on each head's q and k. Qwen2 (model_type qwen2)
runs here too: no QK-norm, biases on the q/k/v projections."""
from dataclasses import dataclass

from nvllm.hookspecs import hookimpl
from nvllm.models.base import ModelConfig
from nvllm.models.llama import LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    name = "qwen3"
    hf_model_types = ("qwen3", "qwen2")
    hf_config_class = "Qwen3Config"
    fused_step_layout = "llama"  # Llama's, with the q/k norms and biases the C step reads where present
    random_presets = {
        "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                     tie_word_embeddings=True, rope_theta=1000000.0),
        "qwen3-0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                           num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                           max_position_embeddings=40960, tie_word_embeddings=True, rope_theta=1000000.0),
        "qwen3-8b": dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                         max_position_embeddings=40960, tie_word_embeddings=False, rope_theta=1000000.0),
        "qwen3-32b": dict(vocab_size=151936, hidden_size=5120, intermediate_size=25600, num_hidden_layers=64,
                          num_attention_heads=64, num_key_value_heads=8, head_dim=128,
                          max_position_embeddings=40960, tie_word_embeddings=False, rope_theta=1000000.0),
    }

    @dataclass
    class Config(ModelConfig):
        name: str = "qwen3"
        hf_repo: str | None = "Qwen/Qwen3-0.6B"

    def __init__(self, hf_config):
        is_qwen2 = hf_config.model_type == "qwen2"
        qkv_bias = True if is_qwen2 else getattr(hf_config, "attention_bias", False)
        super().__init__(hf_config, qkv_bias=qkv_bias, qk_norm=not is_qwen2)


@hookimpl
def register_models(register):
    register(Qwen3ForCausalLM)
