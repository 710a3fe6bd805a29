"""The text API: tokenizer.json + a jinja chat template, or a clear error without them."""
import pytest

from checkpoints import write_checkpoint, write_text_checkpoint
from illada_rt import Engine, NoTokenizerError


@pytest.fixture(scope="module")
def text_model(tmp_path_factory, kernel_impl):
    path = tmp_path_factory.mktemp("text")
    write_text_checkpoint(str(path))
    return Engine.from_pretrained(str(path))


def test_generate_text_matches_token_api(text_model):
    kw = dict(steps=8, gen_length=8, block_length=8)
    text = text_model.generate_text("w1 w2 w3", **kw)
    ids = text_model.codec.encode("w1 w2 w3")
    out = text_model.generate([ids], **kw)
    assert isinstance(text, str)
    assert text == text_model.codec.decode(out.answers[0, : int(out.answer_lengths[0])].tolist())


def test_batch_of_prompts_is_left_padded(text_model):
    kw = dict(steps=8, gen_length=8, block_length=8)
    texts = text_model.generate_text(["w1 w2 w3 w4 w5", "w9"], **kw)
    assert isinstance(texts, list) and len(texts) == 2
    ids, mask = text_model.encode_prompts(["w1 w2 w3 w4 w5", "w9"])
    assert mask.tolist()[1] == [0, 0, 0, 0, 1] and ids[1, 0] == 0
    alone = text_model.generate_text(["w1 w2 w3 w4 w5"], **kw)
    assert texts[0] == alone[0]


def test_chat_template_renders(text_model):
    rendered = text_model.codec.render_chat([{"role": "user", "content": "w5 w6"}])
    assert rendered == "<bos><|user|> w5 w6 <|assistant|>"
    assert isinstance(text_model.generate_text(["w5 w6"], chat=True, steps=8, gen_length=8, block_length=8)[0], str)


def test_mask_text_in_prompt_is_refused(text_model):
    with pytest.raises(ValueError, match="mask token"):
        text_model.generate_text("w1 <mask> w2", steps=8, gen_length=8, block_length=8)


def test_no_tokenizer_is_a_clear_error(tmp_path):
    write_checkpoint(str(tmp_path), "llada")
    eng = Engine.from_pretrained(str(tmp_path))
    with pytest.raises(NoTokenizerError, match="no tokenizer.json"):
        eng.generate_text("hello")
    assert eng.generate([[1, 2]], steps=8, gen_length=8, block_length=8).sequences.shape == (1, 10)
