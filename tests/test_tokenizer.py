from ostaf.tokenizer import clip_tokenizer


def test_known_ids_of_sd_tokenizer():
    assert clip_tokenizer()("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_special_tokens_and_length():
    tok = clip_tokenizer()
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)
    assert len(tok) == 49408 and tok.model_max_length == 77
    long = tok("a " * 300, truncation=True, max_length=77).input_ids
    assert len(long) == 77 and long[-1] == 49407


def test_placeholders_become_single_tokens():
    tok = clip_tokenizer()
    tok.add_tokens(["*a", "*m"])
    ids = tok("a cat in the shape of *m in the appearance of *a").input_ids
    pieces = tok.convert_ids_to_tokens(ids)
    assert "*m" in pieces and "*a" in pieces
    assert ids[pieces.index("*m")] == 49409 and ids[pieces.index("*a")] == 49408


def test_each_call_is_a_fresh_tokenizer():
    first = clip_tokenizer()
    first.add_tokens(["*s"])
    assert len(clip_tokenizer()) == 49408
