"""Text data: the shipped corpora, the readers' bad-input behaviour, tokenisation, batching."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sparsegen import datasets
from sparsegen.datasets import text
from sparsegen.text import BOS, EOS, PAD, SubwordTokenizer, bucket_batches, pad_sequences

# one worker runs this module, so that its fixture runs once, not once on each
pytestmark = pytest.mark.xdist_group("datasets_text")

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "text"
PACKAGED = Path(datasets.__file__).parents[1] / "data" / "text"


@pytest.mark.parametrize("folder", ["multi30k-fr-en", "snli", "multinli"])
def test_shipped_copies_match_the_published_checksums(folder):
    """Each shipped file's uncompressed text has the sha256 its source README publishes."""
    readme = (PACKAGED / folder / "README.md").read_text()
    for path in sorted((PACKAGED / folder).glob("*.gz")):
        digest = hashlib.sha256(gzip.open(path).read()).hexdigest()
        assert digest in readme, path.name
    if SHARED.is_dir():
        for path in (PACKAGED / folder).glob("*.gz"):
            assert path.read_bytes() == (SHARED / folder / path.name).read_bytes()


def test_the_package_data_readme_gives_source_licence_and_citation():
    readme = (PACKAGED / "README.md").read_text()
    for needed in ("Elliott", "Bowman", "Williams", "CC BY-SA 4.0", "non-commercial"):
        assert needed in readme


@pytest.mark.parametrize(
    "split, size",
    [("train", 29000), ("val", 1014), ("test_2016_flickr", 1000), ("test_2017_flickr", 1000)],
)
def test_multi30k_has_the_published_sizes_aligned(split, size):
    fr_en = datasets.load_multi30k(split)
    en_fr = datasets.load_multi30k(split, source="en", target="fr")
    assert len(fr_en.source) == len(fr_en.target) == size
    assert fr_en.source == en_fr.target and fr_en.target == en_fr.source
    assert fr_en.empty_dropped == 0


@pytest.mark.parametrize(
    "name, split, usable, no_label",
    [
        ("snli", "dev", 9842, 158),
        ("snli", "test", 9824, 176),
        ("multinli", "dev_matched", 9815, 185),
        ("multinli", "dev_mismatched", 9832, 168),
    ],
)
def test_nli_sets_have_the_official_usable_counts(name, split, usable, no_label):
    data = datasets.load_nli(name, split)
    assert len(data) == usable and data.dropped["no gold label"] == no_label
    assert set(np.unique(data.labels)) == {0, 1, 2}


def test_unknown_names_list_what_is_shipped():
    with pytest.raises(ValueError, match="shipped: snli: dev, test"):
        datasets.load_nli("snli", "train")
    with pytest.raises(
        TypeError, match=r"load_nli: name must be a dataset name \(a str\); got None"
    ):
        datasets.load_nli(None)
    with pytest.raises(ValueError, match="unknown Multi30k split"):
        datasets.load_multi30k("test_2018")
    with pytest.raises(ValueError, match="'fr' and 'en'"):
        datasets.load_multi30k("val", source="de")


def test_a_data_home_replaces_the_shipped_copy(tmp_path, monkeypatch):
    folder = tmp_path / "multi30k-fr-en"
    folder.mkdir()
    (folder / "val.fr").write_text("un chat\nun chien\n")
    (folder / "val.en").write_text("a cat\na dog\n")
    assert datasets.load_multi30k("val", data_home=tmp_path).target == ["a cat", "a dog"]
    monkeypatch.setenv(text.TEXT_ENV, str(tmp_path))
    assert datasets.load_multi30k("val").source == ["un chat", "un chien"]


def test_parallel_files_of_different_lengths_name_both_files_and_counts(tmp_path):
    (tmp_path / "a.fr").write_text("un\ndeux\ntrois\n")
    (tmp_path / "a.en").write_text("one\ntwo\n")
    with pytest.raises(ValueError, match=r"a\.fr has 3 lines, .*a\.en has 2"):
        datasets.read_parallel(tmp_path / "a.fr", tmp_path / "a.en")


def test_pairs_with_an_empty_side_are_dropped_and_counted(tmp_path):
    (tmp_path / "a.fr").write_text("un\n\ntrois\n  \n")
    (tmp_path / "a.en").write_text("one\ntwo\n\nfour\n")
    data = datasets.read_parallel(tmp_path / "a.fr", tmp_path / "a.en")
    assert (data.source, data.target, data.empty_dropped) == (["un"], ["one"], 3)


def test_text_that_is_not_utf8_names_the_file_and_line(tmp_path):
    (tmp_path / "a.fr").write_bytes(b"un\ndeux\n\xff\xfe trois\n")
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n")
    with pytest.raises(ValueError, match=r"a\.fr, line 3: not UTF-8"):
        datasets.read_parallel(tmp_path / "a.fr", tmp_path / "a.en")


def _corrupt_gzip(text: str) -> bytes:
    """Gzipped ``text`` with bytes of its deflate stream overwritten (zlib rejects it)."""
    data = gzip.compress(text.encode())
    return data[:10] + b"\xff" * 10 + data[20:]


@pytest.mark.parametrize(
    "read, name",
    [
        (lambda p: datasets.read_parallel(p, p), "train.fr.gz"),
        (datasets.read_tatoeba, "fra.txt.gz"),
        (datasets.read_nli, "pairs.jsonl.gz"),
        (datasets.read_nli, "pairs.csv.gz"),
    ],
)
def test_a_corrupt_gzip_file_is_named_by_every_reader(tmp_path, read, name):
    path = tmp_path / name
    path.write_bytes(_corrupt_gzip("a\tb\n" * 50))
    with pytest.raises(ValueError, match=rf"{name}, line 1: not a readable gzip file"):
        read(path)


def test_a_byte_order_mark_opening_any_line_is_not_text(tmp_path):
    # concatenated files: each part opens with a BOM
    (tmp_path / "a.fr").write_text("\ufeffun\n\ufeffdeux\n")
    (tmp_path / "a.en").write_text("one\n\ufefftwo\n")
    data = datasets.read_parallel(tmp_path / "a.fr", tmp_path / "a.en")
    assert (data.source, data.target) == (["un", "deux"], ["one", "two"])
    (tmp_path / "fra.txt").write_text("\ufeffHi.\tSalut.\n\ufeffRun!\tCours !\n")
    assert datasets.read_tatoeba(tmp_path / "fra.txt").source == ["Hi.", "Run!"]
    (tmp_path / "p.csv").write_text(
        "\ufeffpairID,sentence1,sentence2,label\np1,a,b,neutral\n\ufeffp2,c,d,neutral\n"
    )
    assert datasets.read_nli(tmp_path / "p.csv").pair_ids == ["p1", "p2"]
    (tmp_path / "p.jsonl").write_text(
        '{"gold_label": "neutral", "sentence1": "a", "sentence2": "b"}\n'
        '\ufeff{"gold_label": "neutral", "sentence1": "c", "sentence2": "d"}\n'
    )
    assert datasets.read_nli(tmp_path / "p.jsonl").premises == ["a", "c"]


def _nli_files(tmp_path: Path) -> dict[str, Path]:
    rows = [
        ("p1", 'A man, "quoted", sleeps.', "A man rests.", "entailment"),
        ("p2", "Two dogs run.", "Cats sit.", "contradiction"),
        ("p3", "A girl sings.", "A girl sings well.", "-"),
        ("p4", "A boy eats.", "A boy eats lunch.", "neutral"),
    ]
    csv_path = tmp_path / "pairs.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["pairID", "sentence1", "sentence2", "label"])
        writer.writerows(rows)
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps({"gold_label": g, "sentence1": p, "sentence2": h, "pairID": i})
            for i, p, h, g in rows
        )
    )
    txt = tmp_path / "pairs.txt"
    header = "gold_label\tsentence1_binary_parse\tsentence1\tsentence2\tpairID\n"
    txt.write_text(header + "".join(f"{g}\t( x )\t{p}\t{h}\t{i}\n" for i, p, h, g in rows))
    gz = tmp_path / "pairs.jsonl.gz"
    gz.write_bytes(gzip.compress(jsonl.read_bytes()))
    return {"csv": csv_path, "jsonl": jsonl, "txt": txt, "gz": gz}


@pytest.mark.parametrize("kind", ["csv", "jsonl", "txt", "gz"])
def test_read_nli_reads_snli_in_every_format_alike(tmp_path, kind):
    data = datasets.read_nli(_nli_files(tmp_path)[kind])
    assert data.premises == ['A man, "quoted", sleeps.', "Two dogs run.", "A boy eats."]
    assert data.labels.tolist() == [0, 2, 1] and data.pair_ids == ["p1", "p2", "p4"]
    assert data.dropped == {"no gold label": 1, "empty sentence": 0}


def test_nli_bad_rows_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("pairID,sentence1,sentence2,label\np1,a,b,entailment\np2,a,b\n")
    with pytest.raises(ValueError, match=r"bad\.csv, line 3: 3 fields where the header has 4"):
        datasets.read_nli(bad)
    bad.write_text("pairID,sentence1,sentence2,label\np1,a,b,maybe\n")
    with pytest.raises(ValueError, match=r"line 2: unknown label 'maybe'; expected one of "
                       r"entailment, neutral, contradiction"):  # fmt: skip
        datasets.read_nli(bad)
    bad.write_text("pairID,premise,label\n")
    with pytest.raises(ValueError, match="line 1: the header lacks sentence1, sentence2"):
        datasets.read_nli(bad)
    broken = tmp_path / "bad.jsonl"
    broken.write_text('{"gold_label": "neutral", "sentence1": "a", "sentence2": "b"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: not JSON"):
        datasets.read_nli(broken)
    broken.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 1: JSON nested too deeply"):
        datasets.read_nli(broken)
    with pytest.raises(ValueError, match="unknown NLI format"):
        datasets.read_nli(tmp_path / "pairs.parquet")
    bad.write_text("pairID,sentence1,sentence2\n")
    with pytest.raises(ValueError, match=r"the header lacks label \(or gold_label\)"):
        datasets.read_nli(bad)
    for content in (
        "",
        "pairID,sentence1,sentence2,label\n",
        "p,sentence1,sentence2,label\np,a,b,-\n",
    ):
        bad.write_text(content)  # (0 pairs, without a word)
        with pytest.raises(ValueError, match=r"bad\.csv: no labelled pair"):
            datasets.read_nli(bad)
    empty = tmp_path / "fra.txt"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"fra\.txt: no sentence pair \(1 with a blank side\)"):
        datasets.read_tatoeba(empty)


def test_nli_files_read_gold_label_first_in_every_format_and_any_case(tmp_path):
    # a row with both columns was read as its `label` from .csv, its `gold_label` from .jsonl
    both = tmp_path / "both.CSV"
    both.write_text("pairID,sentence1,sentence2,gold_label,label\np1,a,b,neutral,entailment\n")
    record = {"sentence1": "a", "sentence2": "b", "gold_label": "neutral", "label": "entailment"}
    twin = tmp_path / "both.JSONL"
    twin.write_text(json.dumps(record) + "\n")
    assert datasets.read_nli(both).labels.tolist() == datasets.read_nli(twin).labels.tolist() == [1]


@pytest.mark.parametrize("kind", ["csv", "txt"])
def test_a_carriage_return_inside_a_field_names_file_and_line(tmp_path, kind):
    path = tmp_path / f"cr.{kind}"
    comma = "," if kind == "csv" else "\t"
    rows = ["pairID,sentence1,sentence2,label", "p1,a,b,neutral", "p2,a\rb,c,neutral"]
    path.write_bytes("\n".join(row.replace(",", comma) for row in rows).encode())
    with pytest.raises(ValueError, match=rf"cr\.{kind}, line 3: a carriage return \(\\r\)"):
        datasets.read_nli(path)
    if kind == "csv":  # quoted, a carriage return is text
        path.write_bytes(b'pairID,sentence1,sentence2,label\np1,"a\rb",c,neutral\n')
        assert datasets.read_nli(path).premises == ["a\rb"]


def test_a_quote_left_open_names_its_line_and_takes_no_row(tmp_path):
    # csv reads on to the next quote: four rows had become two pairs, silently
    path = tmp_path / "open.csv"
    path.write_text('pairID,sentence1,sentence2,label\n1,"Wait, he said,A man speaks,entailment\n'
                    '2,A dog runs,A cat sleeps,contradiction\n3,"Go" she yelled,A woman yells,'
                    'entailment\n4,A boy eats,A child eats,entailment\n')  # fmt: skip
    with pytest.raises(ValueError, match=r"open\.csv, line 2: a quoted field runs on to line 4"):
        datasets.read_nli(path)


@pytest.mark.parametrize("kind", ["csv", "txt"])
def test_a_field_longer_than_csvs_default_cap_is_read(tmp_path, kind):
    path = tmp_path / f"long.{kind}"
    premise = "word " * 40_000  # 200,000 characters, over csv's 131,072
    comma = "," if kind == "csv" else "\t"
    path.write_text(comma.join(["pairID", "sentence1", "sentence2", "label"]) + "\n"
                    + comma.join(["p1", premise, "b", "neutral"]) + "\n")  # fmt: skip
    limit = csv.field_size_limit()
    assert datasets.read_nli(path).premises == [premise.strip()]
    assert csv.field_size_limit() == limit  # the process-wide cap is left as it was


def test_empty_premises_or_hypotheses_are_dropped_and_counted(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text('pairID,sentence1,sentence2,label\np1,,b,neutral\np2,a," ",neutral\n'
                    "p3,a,b,neutral\n")  # fmt: skip
    data = datasets.read_nli(path)
    assert len(data) == 1 and data.dropped["empty sentence"] == 2


def test_tatoeba_split_by_english_sentence_keeps_each_sentence_in_one_part(tmp_path):
    path = tmp_path / "fra.txt"
    lines = [f"Sentence {i % 7}.\tPhrase {i}.\tCC-BY 2.0" for i in range(40)]
    path.write_text("\n".join(lines) + "\n")
    data = datasets.read_tatoeba(path)
    assert len(data.source) == 40 and data.target[3] == "Phrase 3."
    parts = datasets.split_by_group(data.source, (0.6, 0.2, 0.2), seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(40))
    seen = [{data.source[i] for i in part} for part in parts]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    path.write_text("no tab here\n")
    with pytest.raises(ValueError, match=r"fra\.txt, line 1: expected English<TAB>French"):
        datasets.read_tatoeba(path)


def test_old_mac_line_ends_are_an_error_and_gzip_is_told_in_any_case(tmp_path):
    # \r-only line ends read as one line, a pair whose sides held every sentence
    source, target = tmp_path / "a.fr", tmp_path / "a.en"
    source.write_bytes(b"un chat\rdeux chats\r")
    target.write_bytes(b"a cat\rtwo cats\r")
    with pytest.raises(ValueError, match=r"a\.fr, line 1: a carriage return"):
        datasets.read_parallel(source, target)
    upper = tmp_path / "b.FR.GZ"
    upper.write_bytes(gzip.compress(b"un chat\n"))
    target.write_text("a cat\n")
    assert datasets.read_parallel(upper, target).source == ["un chat"]


def test_split_by_group_keeps_every_group_whatever_the_fractions_round_to():
    # 0.7 + 0.2 + 0.1 sums to 0.9999999999999999: one group of 100 used to fall out
    groups = [f"g{i}" for i in range(100)]
    for fractions, sizes in (((0.7, 0.2, 0.1), [70, 20, 10]), ((0.1,) * 10, [10] * 10)):
        parts = datasets.split_by_group(groups, fractions)
        assert [len(part) for part in parts] == sizes
        assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    for bad in ((0.8, 0.3), (1.2, -0.2), (math.nan,)):
        with pytest.raises(ValueError, match="non-negative and sum to at most 1"):
            datasets.split_by_group(groups, bad)
    # a str was one group of its letters; a matrix split its flattened entries
    for groups, fractions in (("abab", (0.5, 0.5)), ([["a", "b"], ["c", "d"]], (0.5, 0.5)),
                              (["a", "b"], 0.5)):  # fmt: skip
        with pytest.raises(ValueError, match="must be 1-D sequences"):
            datasets.split_by_group(groups, fractions)
    # (numpy's sort error: "'<' not supported between instances of 'str' and 'int'")
    with pytest.raises(TypeError, match=r"of one kind that sorts .*; got int, str"):
        datasets.split_by_group(["a", 1, "b", 2], (0.5, 0.5))


def test_tatoeba_pairs_with_an_empty_side_are_dropped_and_counted(tmp_path):
    path = tmp_path / "fra.txt"
    path.write_text("Hi.\tSalut.\tCC-BY 2.0\nRun!\t\tCC-BY 2.0\n\t  Cours !\n\nGo.\tVa !\n")
    data = datasets.read_tatoeba(path)
    assert (data.source, data.target, data.empty_dropped) == (["Hi.", "Go."], ["Salut.", "Va !"], 3)


@pytest.fixture(scope="module")
def tokenizer() -> SubwordTokenizer:
    return SubwordTokenizer.train(datasets.load_multi30k("val").source, vocab_size=800)


@settings(max_examples=60, deadline=None)
@given(
    st.text(
        alphabet=st.characters(categories=("L", "N", "P", "S"), exclude_characters="\u2581")
        | st.just(" "),
        max_size=40,
    )
)
def test_decoding_restores_any_text_even_unseen_characters(tokenizer, sentence):
    """Byte fallback: nothing is unknown, so decode(encode(x)) == x for NFKC-normal text, up
    to SentencePiece's whitespace normalisation (runs of spaces collapse, ends are stripped;
    its word mark ▁, a symbol too, reads as a space, as decode's docstring says)."""
    assume(unicodedata.normalize("NFKC", sentence) == sentence)
    ids = tokenizer.encode([sentence])[0]
    assert all(0 <= i < len(tokenizer) for i in ids)
    assert tokenizer.decode([ids])[0] == " ".join(sentence.split())


def test_the_tokenizer_takes_no_batch_as_an_empty_batch_and_no_bare_string(tokenizer):
    assert tokenizer.decode([]) == [] and tokenizer.encode([]) == []  # (decode gave "")
    with pytest.raises(TypeError, match="train takes a list of sentences"):
        SubwordTokenizer.train("hello world")  # (one sentence per character)


def test_tokenizer_round_trips_through_bytes_and_keeps_special_ids(tokenizer):
    again = SubwordTokenizer.from_bytes(tokenizer.to_bytes())
    sentence = "Un homme en chemise bleue fait du vélo ☃."
    assert again.encode([sentence]) == tokenizer.encode([sentence])
    assert [tokenizer.id_to_piece(i) for i in (PAD, BOS, EOS)] == ["<pad>", "<s>", "</s>"]
    assert tokenizer.decode([[BOS, *tokenizer.encode([sentence])[0], EOS, PAD]]) == [sentence]
    # a string alone used to be encoded one character a sentence; empty or foreign bytes
    # loaded as a tokenizer of no piece, or as SentencePiece's own RuntimeError
    with pytest.raises(TypeError, match="list of sentences"):
        tokenizer.encode(sentence)
    for model in (b"", b"not a model"):
        with pytest.raises(ValueError, match="not a SentencePiece model"):
            SubwordTokenizer.from_bytes(model)


def test_a_tiny_corpus_gets_a_smaller_vocabulary_and_an_empty_one_an_error():
    tiny = SubwordTokenizer.train(["a b", "b c"], vocab_size=5000)
    assert len(tiny) < 5000 and tiny.decode(tiny.encode(["a b c d"])) == ["a b c d"]
    with pytest.raises(ValueError, match="empty corpus"):
        SubwordTokenizer.train(["", "   "])


def test_a_word_seen_only_in_a_very_long_sentence_is_learnt():
    # SentencePiece skips sentences over 4192 bytes unless told otherwise
    short = [f"a cat sat on mat number {i}" for i in range(200)]
    long_line = "quetzalcoatl " * 400
    assert len(long_line.encode()) > 4192
    tokenizer = SubwordTokenizer.train([*short, long_line], vocab_size=300)
    assert tokenizer.pieces("quetzalcoatl") == ["▁quetzalcoatl"]


def test_padding_and_markers():
    padded, lengths = pad_sequences([[5, 6], [7]], bos=True, eos=True)
    assert padded.tolist() == [[BOS, 5, 6, EOS], [BOS, 7, EOS, PAD]]
    assert lengths.tolist() == [4, 3]
    empty, none = pad_sequences([])
    assert empty.shape == (0, 0) and none.numel() == 0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=300), st.integers(1, 17), st.booleans())
def test_buckets_cover_every_example_once_with_little_padding(lengths, size, shuffle):
    batches = list(bucket_batches(lengths, size, shuffle=shuffle, seed=3, bucket=4))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert all(1 <= len(b) <= size for b in batches)
    if not shuffle:  # sorted: each batch's lengths are contiguous in the sorted order
        flat = np.asarray(lengths)[np.concatenate(batches)]
        assert np.all(np.diff(flat) >= 0)
    again = list(bucket_batches(lengths, size, shuffle=shuffle, seed=3, bucket=4))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))


def test_buckets_of_no_example_are_an_error():
    # range() with a step of 0 said "arg 3 must not be zero"
    with pytest.raises(ValueError, match="batch_size and bucket must be at least 1"):
        list(bucket_batches([3, 4], 0))


def test_pad_sequences_matches_torch_pad_sequence():
    rows = [[4, 5, 6], [7], [8, 9]]
    ours, _ = pad_sequences(rows)
    theirs = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(r) for r in rows], batch_first=True, padding_value=PAD
    )
    assert torch.equal(ours, theirs)
