"""ListOps (Long Range Arena), generated here: nested MIN/MAX/MED/SM lists whose value is a digit.

The distribution is the benchmark's (Tay et al., 2020): trees from depth 1 to at most 10; a node
below the maximum depth is a uniform digit with probability 0.75, otherwise one of the four
operators (uniform) over 2-10 (uniform) generated children; length counts 1 per digit and 2 per
operator (its opening token and its closing bracket); a tree is kept when 500 < length < 2000,
and trees are de-duplicated. ``Source`` is the benchmark's text form, which wraps every partial
application in parentheses: MAX(2, 9) is ``( ( ( [MAX 2 ) 9 ) ] )``.

    generate(n, seed=0)   -> datasets.Dataset with columns Source (str) and Target (int 0-9)
    splits(cache_dir)     -> DatasetDict train/validation/test (96,000 / 2,000 / 2,000), cached
    parse(source)         -> the tree again; shallow_value(tree, levels) -> a depth-limited guess
    root_operator_baseline(train, evaluation) -> accuracy of reading the outermost operator only

``python -m tasks.listops`` prints the plateau of a model that reads only the outermost operator
(``root_operator_baseline``), how fast an MLP learns the answer from the first nesting levels'
symbol counts (``shallow_counts``, ``count_table``, ``count_mlp_curve``) and how often
``shallow_value`` is right on the validation split (how much of the answer those levels hold).
``python -m tasks.listops RUN_DIR`` probes a trained classifier's input adapter for the nesting
depth (``nesting_depth``, ``depth_probe``).
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
MAX_DEPTH, MAX_ARGS, LEAF_PROBABILITY = 10, 10, 0.75
MIN_LENGTH, MAX_LENGTH = 500, 2000  # exclusive bounds
SPLITS = {"train": 96_000, "validation": 2_000, "test": 2_000}


def random_tree(rng: random.Random, depth: int = 1):
    """A digit, or ``(operator, [children])``; and its length in benchmark tokens."""
    if depth >= MAX_DEPTH or rng.random() > 1 - LEAF_PROBABILITY:
        return rng.randrange(10), 1
    children, length = [], 2
    for _ in range(rng.randint(2, MAX_ARGS)):
        child, child_length = random_tree(rng, depth + 1)
        children.append(child)
        length += child_length
    return (rng.choice(OPERATORS), children), length


def value(tree) -> int:
    if isinstance(tree, int):
        return tree
    operator, children = tree
    values = [value(c) for c in children]
    if operator == "[MIN":
        return min(values)
    if operator == "[MAX":
        return max(values)
    if operator == "[MED":
        return int(statistics.median(values))
    return sum(values) % 10


def to_text(tree) -> str:
    """The benchmark's text form: ``( ( ( [MAX 2 ) 9 ) ] )`` for MAX(2, 9)."""
    if isinstance(tree, int):
        return str(tree)
    operator, children = tree
    text = f"( {operator} {to_text(children[0])} )"
    for child in children[1:]:
        text = f"( {text} {to_text(child)} )"
    return f"( {text} ] )"


def parse(source: str):
    """The tree of a ``Source`` text: the inverse of ``to_text``."""
    stack: list[list] = [[]]
    for token in source.split():
        if token.startswith("["):
            stack.append([token])
        elif token == "]":
            operator, *children = stack.pop()
            stack[-1].append((operator, children))
        elif token not in "()":
            stack[-1].append(int(token))
    (tree,) = stack[0]
    return tree


TYPICAL = {"[MIN": 0, "[MAX": 9, "[MED": 5, "[SM": 5}  # a guess for a list left unevaluated


def shallow_value(tree, levels: int) -> int:
    """The value computed ``levels`` nesting levels deep, every list below that replaced by its
    operator's typical value (MIN 0, MAX 9, MED and SM 5)."""
    if isinstance(tree, int):
        return tree
    operator, children = tree
    if levels == 0:
        return TYPICAL[operator]
    return value((operator, [shallow_value(c, levels - 1) for c in children]))


def compact(source: str) -> str:
    """The text without the parentheses (what models usually read): ``[MAX 2 9 ]``."""
    return " ".join(token for token in source.split() if token not in "()")


def dense(source: str) -> str:
    """The compact text without spaces, what the byte classifier reads: ``[MAX29]``. Every
    argument is one digit or a bracketed list, so nothing is lost; 685-2,787 bytes per example
    instead of 1,191-4,773."""
    return "".join(token for token in source.split() if token not in "()")


def nesting_depth(text: str) -> list[int]:
    """Per byte of the compact or dense text, the number of lists around it: an operator's bytes
    and its closing ``]`` belong to the list they open or close (``[MAX2]`` -> 1 1 1 1 1 1)."""
    depths, depth = [], 0
    for byte in text:
        depth += byte == "["
        depths.append(depth)
        depth -= byte == "]"
    return depths


def depth_probe(features: list, depths: list, fit: int) -> dict:
    """How well a least-squares map reads the nesting depth from per-byte features: ``features``
    ``[L_i, C]`` and ``depths`` ``[L_i]`` per example, fitted on the first ``fit`` examples, scored
    on the rest: R^2 of depth as a number, accuracy of depth as a class (one-hot targets, argmax),
    and the accuracy of always answering the fitted examples' most common depth."""
    import torch

    def design(xs):  # features and a constant; gelsd (SVD) copes with redundant columns
        x = torch.cat(xs).double()
        return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)

    x_fit, x_test = design(features[:fit]), design(features[fit:])
    d_fit, d_test = torch.cat(depths[:fit]).long(), torch.cat(depths[fit:]).long()
    classes = int(max(d_fit.max(), d_test.max())) + 1
    number = x_test @ torch.linalg.lstsq(x_fit, d_fit.double()[:, None], driver="gelsd").solution
    r2 = 1 - (number[:, 0] - d_test).square().mean() / d_test.double().var()
    onehot = torch.nn.functional.one_hot(d_fit, classes).double()
    guess = (x_test @ torch.linalg.lstsq(x_fit, onehot, driver="gelsd").solution).argmax(1)
    majority = (d_test == d_fit.mode().values).double().mean()
    return {"r2": float(r2), "accuracy": float((guess == d_test).double().mean()),
            "majority": float(majority)}


def probe_run(run_dir: str, sources: list[str], fit: int) -> dict:
    """``depth_probe`` of a trained byte classifier's input adapter (``perceiver.from_pretrained``)
    on the dense texts of ``sources``: its byte + position sum and its output (which adds the
    running sums, if any)."""
    import torch

    import perceiver
    from perceiver import tokenizer

    adapter = perceiver.from_pretrained(run_dir).input_adapter
    before, after, depths = [], [], []
    with torch.no_grad():
        for source in sources:
            text = dense(source)
            ids = torch.tensor([tokenizer.encode(text)])
            before.append(adapter.embed(ids)[0])
            after.append(adapter(ids)[0][0])
            depths.append(torch.tensor(nesting_depth(text)))
    return {"byte + position": depth_probe(before, depths, fit), "adapter": depth_probe(after, depths, fit)}


def root_operator(source: str) -> str:
    """The outermost operator of a ``Source`` (or compact) text: ``[MAX``, ``[MIN``, ``[MED`` or ``[SM``."""
    operator = next((token for token in source.split() if token.startswith("[")), None)
    if operator is None:
        raise ValueError(f"source: expected a list with an operator, got {source[:40]!r}")
    return operator


def root_operator_baseline(train, evaluation) -> float:
    """Accuracy on ``evaluation`` of answering, for each outermost operator, the value it most often
    has in ``train`` (datasets or dicts with Source and Target): the plateau a classifier reaches
    when it reads only the outermost operator."""
    from collections import Counter, defaultdict

    values = defaultdict(Counter)
    for source, target in zip(train["Source"], train["Target"], strict=True):
        values[root_operator(source)][target] += 1
    answer = {operator: counts.most_common(1)[0][0] for operator, counts in values.items()}
    pairs = list(zip(evaluation["Source"], evaluation["Target"], strict=True))
    if not pairs:
        raise ValueError("evaluation: expected at least one example, got none")
    return sum(answer.get(root_operator(source)) == target for source, target in pairs) / len(pairs)


SYMBOLS = "0123456789[]MINAXEDS"  # every byte of the dense text
_SYMBOL_INDEX = {symbol: i for i, symbol in enumerate(SYMBOLS)}


def shallow_counts(source: str, levels: int = 2) -> list[int]:
    """How often each of ``SYMBOLS`` occurs at nesting depth 1, 2, ..., ``levels`` of the dense
    text: ``levels * 20`` counts, depth 1 first. The root's direct arguments and the operators of
    its sub-lists (at ``levels=2``) are what ``shallow_value`` reads."""
    counts = [0] * (levels * len(SYMBOLS))
    text = dense(source)
    for byte, depth in zip(text, nesting_depth(text), strict=True):
        if depth <= levels:
            counts[(depth - 1) * len(SYMBOLS) + _SYMBOL_INDEX[byte]] += 1
    return counts


def count_table(rows, levels: int = 2):
    """``shallow_counts`` of every row (a dataset or dict with Source and Target) as a float
    tensor ``[N, levels * 20]``, and the targets ``[N]``. Depth 1 comes first, so the first 20
    columns are the table at ``levels=1``."""
    import torch

    counts = torch.tensor([shallow_counts(source, levels) for source in rows["Source"]], dtype=torch.float)
    return counts, torch.tensor(rows["Target"])


def count_mlp_curve(train, validation, steps: tuple[int, ...], log_counts: bool = True,
                    batch_size: int = 32, seed: int = 0) -> dict[int, float]:
    """Validation accuracy after each of ``steps`` of an MLP (2 hidden layers of 256, AdamW at
    1e-3) trained on symbol counts: ``train`` and ``validation`` are ``(counts, targets)`` pairs
    (``count_table``). How fast the features that would pass 40% can be learned, given them.
    ``log_counts``: feed log(1 + count) (presence matters more than number) instead of count / 8."""
    import torch
    from torch import nn

    (x_train, y_train), (x_val, y_val) = ((torch.log1p(x) if log_counts else x / 8, y)
                                          for x, y in (train, validation))
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(x_train.shape[1], 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(),
                        nn.Linear(256, 10))
    optimizer = torch.optim.AdamW(mlp.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    curve = {}
    for step in range(1, max(steps) + 1):
        batch = torch.randint(len(x_train), (batch_size,), generator=generator)
        loss = nn.functional.cross_entropy(mlp(x_train[batch]), y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in steps:
            with torch.no_grad():
                curve[step] = float((mlp(x_val).argmax(1) == y_val).float().mean())
    return curve


def _examples(n: int, rng: random.Random, seen: set[str]) -> tuple[list[str], list[int]]:
    sources, targets = [], []
    while len(sources) < n:
        tree, length = random_tree(rng)
        if not MIN_LENGTH < length < MAX_LENGTH:
            continue
        text = to_text(tree)
        if text in seen:
            continue
        seen.add(text)
        sources.append(text)
        targets.append(value(tree))
    return sources, targets


def generate(n: int, seed: int = 0):
    """``n`` distinct ListOps examples as a ``datasets.Dataset`` (Source, Target)."""
    import datasets

    if n < 0:
        raise ValueError(f"n: expected a non-negative count, got {n}")
    sources, targets = _examples(n, random.Random(seed), set())
    features = datasets.Features({"Source": datasets.Value("string"),
                                  "Target": datasets.ClassLabel(num_classes=10)})
    return datasets.Dataset.from_dict({"Source": sources, "Target": targets}, features=features)


def splits(cache_dir: str | Path, seed: int = 0, sizes: dict[str, int] | None = None):
    """The standard splits (no example in two splits), built once and kept in ``cache_dir``."""
    import datasets

    sizes = dict(SPLITS if sizes is None else sizes)
    path = Path(cache_dir) / (f"listops-seed{seed}-" + "-".join(f"{k}{v}" for k, v in sizes.items()))
    if (path / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(path))
    total = generate(sum(sizes.values()), seed)
    parts, start = {}, 0
    for name, size in sizes.items():
        parts[name] = total.select(range(start, start + size))
        start += size
    result = datasets.DatasetDict(parts)
    tmp = path.with_name(path.name + ".tmp")
    result.save_to_disk(str(tmp))
    tmp.rename(path)  # atomic: a crash mid-write leaves no half-built cache
    return datasets.load_from_disk(str(path))


if __name__ == "__main__":
    import sys

    from tasks.classify import cache_dir

    data = splits(cache_dir())
    validation = data["validation"]
    if len(sys.argv) > 1:  # python -m tasks.listops RUN_DIR: can its input adapter see the depth?
        for name, scores in probe_run(sys.argv[1], validation["Source"][:60], fit=30).items():
            print(f"{name}: depth R^2 {scores['r2']:.3f}, as classes {scores['accuracy']:.3f} "
                  f"(majority {scores['majority']:.3f})")
        sys.exit()
    baselines = {name: root_operator_baseline(data["train"], data[name]) for name in ("validation", "test")}
    print("answering each outermost operator's most common value: "
          + ", ".join(f"{name} {accuracy:.4f}" for name, accuracy in baselines.items()))
    # the counts are taken once, at two levels; depth 1 alone is their first 20 columns
    tables = {2: (count_table(data["train"].select(range(20000))), count_table(validation))}
    tables[1] = tuple((counts[:, :len(SYMBOLS)], targets) for counts, targets in tables[2])
    for levels, log_counts in ((2, True), (2, False), (1, True)):
        curve = count_mlp_curve(*tables[levels], (100, 250, 500, 1000), log_counts)
        print(f"MLP on the symbol counts of depths 1-{levels} ({'log' if log_counts else 'count / 8'}): "
              + ", ".join(f"step {step} {accuracy:.3f}" for step, accuracy in curve.items()))
    pairs = list(zip(validation["Source"], validation["Target"], strict=True))
    for levels in (1, 2, 3, 4):
        right = sum(shallow_value(parse(source), levels) == target for source, target in pairs)
        print(f"evaluated {levels} level(s) deep: validation accuracy {right / len(pairs):.3f}")
