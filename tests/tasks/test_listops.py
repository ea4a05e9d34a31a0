import collections
import statistics

import pytest

from tasks import listops


def evaluate(source: str, arities=None) -> int:
    """An independent reading of the text form: a stack machine over the compact tokens."""
    arities = [] if arities is None else arities
    stack = []
    for token in listops.compact(source).split():
        if token.startswith("["):
            stack.append([token])
        elif token == "]":
            operator, *values = stack.pop()
            arities.append(len(values))
            result = {"[MIN": min, "[MAX": max, "[SM": lambda v: sum(v) % 10,
                      "[MED": lambda v: int(statistics.median(v))}[operator](values)
            if not stack:
                return result
            stack[-1].append(result)
        else:
            stack[-1].append(int(token))
    raise AssertionError("unbalanced")


def test_text_form_and_values():
    assert listops.to_text(("[MAX", [2, 9])) == "( ( ( [MAX 2 ) 9 ) ] )"
    assert listops.compact("( ( ( [MAX 2 ) 9 ) ] )") == "[MAX 2 9 ]"
    assert listops.dense("( ( ( [MAX 2 ) 9 ) ] )") == "[MAX29]"
    tree = ("[SM", [("[MED", [1, 2, 3, 4]), ("[MIN", [7, 5, 8]), 9])
    assert listops.value(tree) == (2 + 5 + 9) % 10 == evaluate(listops.to_text(tree))


@pytest.fixture(scope="module")
def sample():
    return listops.generate(60, seed=3)


def test_generated_examples_follow_the_benchmark(sample):
    assert sample.column_names == ["Source", "Target"] and len(sample) == 60
    assert len(set(sample["Source"])) == 60
    operators, arities = collections.Counter(), []
    for source, target in zip(sample["Source"], sample["Target"], strict=True):
        tokens = listops.compact(source).split()
        assert 500 < len(tokens) < 2000  # 1 per digit, 2 per operator (its token and "]")
        assert target == evaluate(source, arities)
        operators.update(t for t in tokens if t.startswith("["))
    total = sum(operators.values())
    assert set(operators) == set(listops.OPERATORS)
    assert all(0.2 < count / total < 0.3 for count in operators.values())  # uniform over four
    assert min(arities) == 2 and max(arities) == 10


def test_deterministic_from_the_seed(sample):
    assert listops.generate(5, seed=3)["Source"] == sample["Source"][:5]
    assert listops.generate(5, seed=4)["Source"] != sample["Source"][:5]


def test_splits_are_disjoint_and_cached(tmp_path):
    sizes = {"train": 8, "validation": 3, "test": 3}
    first = listops.splits(tmp_path, sizes=sizes)
    assert {k: len(v) for k, v in first.items()} == sizes
    texts = [set(first[k]["Source"]) for k in sizes]
    assert sum(len(t) for t in texts) == len(set.union(*texts)) == 14
    again = listops.splits(tmp_path, sizes=sizes)
    assert again["test"]["Source"] == first["test"]["Source"]
    assert len(list(tmp_path.iterdir())) == 1


def test_parse_inverts_to_text_and_shallow_value(sample):
    for source, target in zip(sample["Source"][:50], sample["Target"][:50], strict=True):
        tree = listops.parse(source)
        assert listops.to_text(tree) == source
        assert listops.value(tree) == target
        assert listops.shallow_value(tree, 10) == target  # deep enough: exact
    tree = ("[SM", [1, ("[MAX", [2, ("[MIN", [7, 8])])])
    assert [listops.shallow_value(tree, levels) for levels in (0, 1, 2, 3)] == [5, 0, 3, 8]
