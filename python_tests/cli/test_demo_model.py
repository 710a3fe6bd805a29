"""The bundled demo model loads through the ordinary checkpoint path and writes words."""
import re

import pytest

from illada_rt import DEMO_MODEL_DIR, Engine, ModelConfig


@pytest.fixture(scope="module")
def demo(kernel_impl):
    return Engine.from_pretrained(DEMO_MODEL_DIR)


def test_demo_config_is_a_llada_gqa_checkpoint():
    cfg = ModelConfig.from_dir(DEMO_MODEL_DIR)
    assert cfg.n_kv_heads < cfg.n_heads and cfg.weight_tying


def test_demo_writes_english_words(demo):
    text = demo.generate_text("ROMEO:", gen_length=32, block_length=16, steps=32)
    words = re.findall(r"[A-Za-z]+", text)
    assert len(words) >= 5
    common = {"the", "and", "i", "you", "my", "of", "to", "a", "sir", "is", "not", "lord", "me", "it", "that", "in"}
    assert any(w.lower() in common for w in words), text


def test_demo_infill_keeps_context(demo):
    out = demo.infill_text("To be, or not <|mask|><|mask|>, that is the question.")
    assert out.startswith("To be, or not") and out.endswith(", that is the question.")
