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


def test_root_operator_baseline_answers_each_operators_most_common_value(sample):
    assert listops.root_operator("( ( ( [MAX 2 ) ( [MIN 4 ] ) ) ] )") == "[MAX"
    train = {"Source": ["( [MAX 9 ] )", "( [MAX 8 ] )", "( [MAX 9 ] )", "( [SM 3 ] )"],
             "Target": [9, 8, 9, 3]}
    evaluation = {"Source": ["( [MAX 9 ] )", "( [MAX 1 ] )", "( [SM 3 ] )", "( [MIN 0 ] )"],
                  "Target": [9, 1, 3, 0]}
    assert listops.root_operator_baseline(train, evaluation) == 2 / 4  # MIN, unseen in train, is never right
    # on generated data: the same as counting by hand with the independent stack machine's reading
    half = len(sample) // 2
    train, evaluation = sample[:half], sample[half:]
    by_operator = collections.defaultdict(collections.Counter)
    for source, target in zip(train["Source"], train["Target"], strict=True):
        by_operator[listops.compact(source).split()[0]][target] += 1
    right = sum(by_operator[listops.compact(source).split()[0]].most_common(1)[0][0] == evaluate(source)
                for source in evaluation["Source"])
    expected = right / len(evaluation["Source"])
    assert listops.root_operator_baseline(train, evaluation) == pytest.approx(expected)
    with pytest.raises(ValueError, match="source.*'7'"):
        listops.root_operator("7")
    with pytest.raises(ValueError, match="evaluation"):
        listops.root_operator_baseline(train, {"Source": [], "Target": []})


def test_nesting_depth_counts_the_lists_around_each_byte(sample):
    assert listops.nesting_depth("[MAX2[MIN47]0]") == [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 1, 1]
    for source in sample["Source"][:20]:  # against the tokens: a digit's depth is its open lists
        text = listops.dense(source)
        depths, open_lists, digits = listops.nesting_depth(text), 0, []
        for token in listops.compact(source).split():
            open_lists += token.startswith("[")
            open_lists -= token == "]"
            if token.isdigit():
                digits.append(open_lists)
        assert [d for byte, d in zip(text, depths, strict=True) if byte.isdigit()] == digits


def test_depth_probe_reads_depth_from_features_that_hold_it_and_not_from_noise(sample):
    torch = pytest.importorskip("torch")
    texts = [listops.dense(source) for source in sample["Source"][:12]]
    depths = [torch.tensor(listops.nesting_depth(text)) for text in texts]
    generator = torch.Generator().manual_seed(0)
    exact = listops.depth_probe([d[:, None].float() for d in depths], depths, fit=6)
    onehot = listops.depth_probe([torch.nn.functional.one_hot(d, 12).float() for d in depths], depths, fit=6)
    noise = listops.depth_probe([torch.randn(len(d), 8, generator=generator) for d in depths], depths, fit=6)
    assert exact["r2"] == pytest.approx(1.0, abs=1e-9)
    assert onehot["accuracy"] == 1.0 and onehot["majority"] < 0.6
    assert noise["r2"] < 0.05 and noise["accuracy"] < noise["majority"] + 0.05


def test_probe_run_reads_a_saved_classifier(sample, tmp_path):
    torch = pytest.importorskip("torch")
    from perceiver import PerceiverIO, presets

    torch.manual_seed(0)
    config = presets.byte_classifier(max_seq_len=3072, dim=16, num_latents=4, latent_dim=16, num_layers=1,
                                     num_heads=2, running_sums=4)
    PerceiverIO(config).save_pretrained(tmp_path / "fresh")
    fresh = listops.probe_run(str(tmp_path / "fresh"), sample["Source"][:8], fit=4)
    assert fresh["adapter"] == fresh["byte + position"]  # running sums start as the identity


def test_shallow_counts_count_the_symbols_of_the_first_levels(sample):
    tree = ("[MAX", [2, ("[MIN", [3, 4, ("[SM", [5, 6])]), 9])
    counts = listops.shallow_counts(listops.to_text(tree))
    depth1, depth2 = (dict(zip(listops.SYMBOLS, counts[k:k + 20], strict=True)) for k in (0, 20))
    assert {s: c for s, c in depth1.items() if c} == {"[": 1, "M": 1, "A": 1, "X": 1, "2": 1, "9": 1, "]": 1}
    assert {s: c for s, c in depth2.items() if c} == {"[": 1, "M": 1, "I": 1, "N": 1, "3": 1, "4": 1, "]": 1}
    for source in sample["Source"][:10]:  # every byte of the dense text is counted once at 10 levels
        assert sum(listops.shallow_counts(source, levels=10)) == len(listops.dense(source))


def test_count_mlp_curve_learns_a_rule_of_the_counts(sample):
    pytest.importorskip("torch")
    # a target the counts decide: 9 if a 9 is among the root's direct arguments, else 0
    target = [9 if listops.shallow_counts(s, 1)[9] else 0 for s in sample["Source"]]
    table = listops.count_table({"Source": sample["Source"], "Target": target})
    curve = listops.count_mlp_curve(table, table, steps=(1, 300))
    assert curve[300] == 1.0 and curve[1] < 1.0
