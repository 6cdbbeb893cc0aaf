"""data_prep building blocks: NSP instances, truncation, the sentence encoder, the tar writer, cleaning."""

from __future__ import annotations

import io
import random
import unicodedata

import numpy as np
import pytest
import webdataset as wds
from test_data_prep_helpers import MINILM, lee_docs
from tokenizers import Tokenizer

from data_prep import tokenizer as tokenization
from data_prep.format import encode_sample, sample_key
from data_prep.instances import _truncate, create_instances
from data_prep.shards import TAR_MTIME, UstarWriter
from data_prep.text import sentences
from data_prep.wiki import wikitext_to_text


def _original_truncate(la: int, lb: int, max_num_tokens: int) -> tuple[int, int]:
    """google-research/bert truncate_seq_pair, lengths only."""
    while la + lb > max_num_tokens:
        if la > lb:
            la -= 1
        else:
            lb -= 1
    return la, lb


def test_truncation_matches_the_original_lengths_and_cuts_both_ends():
    rng = random.Random(0)
    fronts = 0
    for _ in range(5000):
        la, lb, m = rng.randint(1, 300), rng.randint(1, 300), rng.randint(2, 200)
        a_lo, a_hi, b_lo, b_hi = _truncate(1000, 1000 + la, 5000, 5000 + lb, m, rng)
        assert (a_hi - a_lo, b_hi - b_lo) == _original_truncate(la, lb, m)
        assert 1000 <= a_lo < a_hi <= 1000 + la and 5000 <= b_lo < b_hi <= 5000 + lb
        fronts += (a_lo - 1000) + (b_lo - 5000)
    assert fronts > 0  # tokens also come off the front, not only the back


def _synthetic_chunk(n_docs: int, rng: random.Random):
    """Documents of 1-30 sentences of 1-60 tokens; returns (docs, off)."""
    docs, off = [], [0]
    for _ in range(n_docs):
        first = len(off) - 1
        for _ in range(rng.randint(2, 30)):
            off.append(off[-1] + rng.randint(1, 60))
        docs.append((first, len(off) - 1))
    return docs, off


def test_instances_follow_the_bert_recipe():
    rng = random.Random(1)
    docs, off = _synthetic_chunk(300, rng)
    seq_len = 128
    inst = create_instances(docs, off, seq_len, 0.1, 1, random.Random(7))
    assert len(inst) > 300
    sentence_starts = set(off)
    random_next = 0
    short = 0
    for x in inst:
        la, lb = x.a_hi - x.a_lo, x.b_hi - x.b_lo
        assert la >= 1 and lb >= 1 and la + lb <= seq_len - 3
        first, last = docs[x.doc]
        assert off[first] <= x.a_lo < x.a_hi <= off[last], "A comes from its own document"
        random_next += x.is_random_next
        short += la + lb < (seq_len - 3) // 2
        if not x.is_random_next:
            assert x.b_lo == x.a_hi or la + lb == seq_len - 3, "B continues A unless truncated"
            assert x.b_hi <= off[last]
        else:
            assert not (off[first] <= x.b_lo < off[last]), "random B comes from another document"
        if la + lb < seq_len - 3:  # not truncated: both sides start on sentence boundaries
            assert x.a_lo in sentence_starts and x.b_lo in sentence_starts
    assert 0.45 < random_next / len(inst) < 0.6  # the recipe: 50%, plus one-sentence chunks that must be random
    assert short > 0  # short_seq_prob at work


def test_one_document_chunk_takes_b_from_a_non_adjacent_part():
    docs, off = [(0, 40)], [i * 10 for i in range(41)]  # one document: 40 sentences of 10 tokens
    inst = create_instances(docs, off, 64, 0.0, 5, random.Random(5))
    randoms = [x for x in inst if x.is_random_next]
    assert len(randoms) > 20
    for x in randoms:
        a_first, a_last = x.a_lo // 10, (x.a_hi - 1) // 10
        b_first, b_last = x.b_lo // 10, (x.b_hi - 1) // 10
        assert b_last < a_first - 1 or b_first > a_last + 1, "B neither overlaps nor touches A"


def test_dupe_factor_makes_more_instances_with_other_splits():
    docs, off = _synthetic_chunk(50, random.Random(2))
    one = create_instances(docs, off, 128, 0.1, 1, random.Random(9))
    three = create_instances(docs, off, 128, 0.1, 3, random.Random(9))
    assert 2.5 * len(one) < len(three) < 3.5 * len(one)


def test_sentence_encoder_matches_the_full_tokenizer():
    sents = sentences(" ".join(lee_docs()[:30])) + [
        "Crème brûlée in Zürich costs €5.",
        "ÀÉÎ uppercase ACCENTS and 中文字符 mixed",
        "A literal [SEP] and [CLS] and [MASK] in the text.",
        "Tabs\tand  spaces",
        "UPPER lower MiXeD 123 4.5 e-mail@example.com",
        "x" * 150 + " a word longer than WordPiece's 100 characters is [UNK]",
        "Bell\x07 and\x1b escape: control characters go the slow way.",
    ]
    rng = random.Random(0)  # and random printable ASCII: punctuation runs, digits, odd words
    alphabet = "aAbBzZ019 .,;:!?'\"()[]{}<>/\\|-_=+*&^%$#@~`"
    sents += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(500)]
    for lowercase in (True, False):
        if lowercase:
            tok = tokenization.load(MINILM)
        else:
            tok = tokenization.train(lee_docs(), 3000, lowercase=False)
            tok.encode_special_tokens = True
        encoder = tokenization.SentenceEncoder(tok)
        assert encoder.fast is not None
        flat, lengths = encoder.encode(sents)
        want = [tok.encode(s, add_special_tokens=False).ids for s in sents]
        assert lengths.tolist() == [len(w) for w in want]
        assert flat.tolist() == [i for w in want for i in w]
    minilm = tokenization.load(MINILM)
    ids = tokenization.SentenceEncoder(minilm).encode(["a [SEP] b"])[0].tolist()
    assert 102 not in ids  # corpus text "[SEP]" is text, not the separator


def test_trained_tokenizer_knows_real_words_and_special_tokens():
    tok = tokenization.train(lee_docs(), 4000, lowercase=True)
    assert [tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    enc = tok.encode("The Government said the fire was burning near Sydney.")
    assert enc.ids[0] == 2 and enc.ids[-1] == 3
    assert 1 not in enc.ids  # no [UNK]
    assert "government" in enc.tokens


def test_tar_writer_is_byte_identical_to_webdataset_tarwriter():
    rng = np.random.default_rng(0)
    samples = [
        encode_sample(
            sample_key("val", 12, i), rng.integers(0, 30000, rng.integers(1, 300)).astype(np.uint16), 3, i % 2, f"d:{i}"
        )
        for i in range(300)
    ]
    for n in (0, 1, 300):
        a, b = io.BytesIO(), io.BytesIO()
        reference = wds.TarWriter(a, encoder=False, mtime=TAR_MTIME)
        ours = UstarWriter(b)
        for s in samples[:n]:
            reference.write(s)
            ours.write(s)
        reference.close()
        ours.close()
        assert a.getvalue() == b.getvalue()


def test_cleaning_normalises_unicode_and_drops_invisible_characters():
    text = "Cafe\u0301 au lait.\u200b It is\x07 good.\nNew\t\tline   here.\ufeff"
    out = sentences(text)
    assert out == ["Café au lait.", "It is good.", "New line here."]
    assert all(unicodedata.is_normalized("NFC", s) for s in out)


def test_wikitext_nested_templates_and_tables_are_removed():
    text = (
        "{{Outer|a={{inner|{{deep}}}}|b=c}}Start.\n"
        '{| class="t"\n|-\n| a\n{|\n| nested\n|}\n|}\n'
        "Middle [[Link|shown]] and [[plain]] and '''bold''' &amp; ''it''. "
        "[[Image:x.png|thumb|cap [[with link]] inside]] End."
    )
    out = wikitext_to_text(text)
    assert "Start." in out and "shown" in out and "plain" in out and "bold & it" in out and "End." in out
    for junk in ("{", "}", "|", "nested", "cap", "with link", "Outer", "thumb", "'''"):
        assert junk not in out, junk


def test_tokenizer_load_disables_padding_and_truncation():
    raw = Tokenizer.from_file(f"{MINILM}/tokenizer.json")
    assert raw.padding is not None  # the packaged file pads to 128: must not leak into instances
    tok = tokenization.load(MINILM)
    assert tok.padding is None and tok.truncation is None
    assert len(tok.encode("word " * 600, add_special_tokens=False).ids) == 600


@pytest.mark.parametrize("strip, expected", [(None, "иезуитът григории"), (False, "йезуитът григорий")])
def test_lowercase_without_stripping_accents_keeps_cyrillic_letters(tmp_path, strip, expected):
    """BERT's uncased rule strips accents, which turns Bulgarian й into и; strip_accents=false keeps the letters."""
    from transformers import AutoTokenizer

    texts = ["Йезуитът Григорий пише писмо до приятел.", "Григорий чете книга в стаята."] * 50
    tok = tokenization.train(texts, 200, lowercase=True, strip_accents=strip)
    assert tok.normalizer.normalize_str("Йезуитът Григорий") == expected
    tokenization.save(tok, True, str(tmp_path), strip)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf.backend_tokenizer.normalizer.normalize_str("Йезуитът Григорий") == expected
