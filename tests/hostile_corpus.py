"""A seeded generator of malformed case files: broken YAML, wrong types, unknown keys, huge and
negative sizes, NaN parameters, tags that would build Python objects, deep nesting, alias bombs,
enormous files, bytes that are not text. Each file says what it breaks (`MUTATIONS`' names).

`python -m tests.hostile_corpus DIR [COUNT] [SEED]` writes a corpus to look at by hand.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path

from tests.tiny_cases import EVAL_BN2D, FORUM_FLIP, GRAPH_NODE

BASES = (EVAL_BN2D, FORUM_FLIP)


def _replace(old: str, new: str) -> Callable[[str, random.Random], str]:
    return lambda text, rng: text.replace(old, new, 1)


def _broken_yaml(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    index = rng.randrange(1, len(lines))
    breakage = rng.choice(
        [
            "{unclosed: [1, 2",
            "\tindented: with a tab",
            "key: value: other",
            "- a list item in a mapping",
            "  badly: indented",
            '"unterminated string',
            "* bad anchor",
        ]
    )
    return "\n".join(lines[:index] + [breakage] + lines[index:]) + "\n"


def _wrong_type(text: str, rng: random.Random) -> str:
    field, value = rng.choice(
        [
            ("num_features: 2", "num_features: two"),
            ("seed: 1", "seed: [1]"),
            ("model: batchnorm2d", "model: 42"),
            ("num_features: 2", "num_features: 2.5"),
            ("description: a", "description: {nested: true}\nx_description: a"),
            ("model: forum_net", "model: [forum_net]"),
            ("num_features: 2", "num_features: true"),
        ]
    )
    if field not in text:
        field, value = "num_features: 2", "num_features: null"
    return text.replace(field, value, 1)


def _unknown_key(text: str, rng: random.Random) -> str:
    name = rng.choice(["colour", "momentun", "runner", "stepz", "bn_config"])
    where = rng.choice(["top", "bn", "input"])
    if where == "top":
        return text + f"{name}: 1\n"
    return text.replace(f"{where}:\n", f"{where}:\n  {name}: 1\n", 1)


def _huge_shape(text: str, rng: random.Random) -> str:
    size = rng.choice([10**6, 2**31, 10**12])  # every shape above the cap on input elements
    shape = rng.choice([f"[{size}, 2, 3, 3]", f"[2, 2, {size}, {size}]", f"[{size}, {size}, {size}, {size}]"])
    return _set_shape(text, shape)


def _negative_size(text: str, rng: random.Random) -> str:
    if rng.random() < 0.5:
        return _set_shape(text, rng.choice(["[-2, 2, 3, 3]", "[2, 0, 3, 3]", "[2, 2, -1, 3]", "[]", "[2]"]))
    return text.replace("num_features: 2", f"num_features: {rng.choice([-2, 0, -(10**9)])}", 1)


def _set_shape(text: str, shape: str) -> str:
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.strip().startswith("shape:"):
            lines[index] = f"  shape: {shape}"
            return "\n".join(lines) + "\n"
    return text.replace("input:\n", f"input:\n  shape: {shape}\n", 1)


def _nan_parameter(text: str, rng: random.Random) -> str:
    value = rng.choice([".nan", ".inf", "-.inf", ".NaN"])
    field = rng.choice(["running_var: [2.0, 0.5]", "running_mean: [0.5, -0.5]", "eps", "momentum"])
    if field in ("eps", "momentum"):
        return text.replace("num_features: 2", f"num_features: 2\n  {field}: {value}", 1)
    if field not in text:
        field = "running_mean: [0.5, -0.25]"
    name = field.split(":")[0]
    return text.replace(field, f"{name}: [{value}, 1.0]", 1)


def _python_tag(text: str, rng: random.Random) -> str:
    tag = rng.choice(
        [
            "!!python/object/apply:os.system ['echo pwned']",
            "!!python/name:os.system",
            "!!python/object:builtins.object {}",
            "!!python/object/new:subprocess.Popen [['true']]",
            "!!binary aGVsbG8=",
            "!custom_tag value",
            "!!set {a, b}",
        ]
    )
    field = rng.choice(["description", "model", "num_features"])
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.strip().startswith(f"{field}:"):
            indent = line[: len(line) - len(line.lstrip())]
            lines[index] = f"{indent}{field}: {tag}"
    return "\n".join(lines) + "\n"


def _deep_nesting(text: str, rng: random.Random) -> str:
    depth = rng.choice([100, 1000, 10000])
    style = rng.choice(["flow", "block"])
    if style == "flow":
        return text + "deep: " + "[" * depth + "]" * depth + "\n"
    return text + "deep:\n" + "".join("  " * level + f"k{level}:\n" for level in range(min(depth, 300))) + "  " * 300 + "end: 1\n"


def _alias_bomb(text: str, rng: random.Random) -> str:
    levels = rng.choice([9, 12])
    bomb = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    bomb += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return text + "bomb:\n" + "\n".join("  " + line for line in bomb) + "\n"


def _enormous(text: str, rng: random.Random) -> str:
    filler = rng.choice(["# " + "x" * 100 + "\n", "- 1.0\n"])
    return text + "padding:\n" + filler * (2_000_000 // len(filler))


def _not_text(text: str, rng: random.Random) -> bytes:
    choice = rng.choice(["binary", "latin1", "nul", "empty", "bom_only"])
    if choice == "binary":
        return bytes(rng.randrange(256) for _ in range(512))
    if choice == "latin1":
        return text.replace("a tiny", "caf\u00e9 tiny").encode("latin-1", errors="replace") + b"\xe9\xff\n"
    if choice == "nul":
        return text.encode() + b"\x00\x00\n"
    if choice == "empty":
        return b""
    return b"\xef\xbb\xbf"


def _not_a_mapping(text: str, rng: random.Random) -> str:
    return rng.choice(["- a\n- list\n", "just a string\n", "42\n", "null\n", "~\n", "[1, 2, 3]\n", "---\n---\n"])


def _bad_steps(text: str, rng: random.Random) -> str:
    steps = rng.choice(
        [
            "steps: []",
            "steps: forward",
            "steps:\n  - forwards",
            "steps:\n  - {export: {opset: 3}}",
            "steps:\n  - {set_mode: sideways}",
            "steps:\n  - {forward: 1, export: 2}",
            "steps:\n  - train_step: {repeat: -1}",
            "steps:\n  - train_step: {repeat: 100000000}",
        ]
    )
    head = text.split("steps:")[0]
    return head + steps + "\n"


def _integral_float(text: str, rng: random.Random) -> str:
    """Numbers where an integer belongs, written as floats: jsonschema counts 2.0 as an integer."""
    old, new = rng.choice(
        [
            ("num_features: 2\n", "num_features: 2.0\n"),
            ("shape: [2, 2, 3, 3]", "shape: [2.0, 2, 3, 3]"),
            ("  - forward\n", "  - train_step: {repeat: 2.0}\n"),
            ("  - forward\n", "  - train_step: {repeat: 1e2}\n"),
            ("  - forward\n", "  - forward: {seed: 1e308}\n"),
            ("  - export\n", "  - export: {opset: 17.0}\n"),
            ("  seed: 1\n", "  seed: 3.0\n"),
            ("mode: eval\n", "mode: eval\nmodel_seed: 3.0\n"),
            ("mode: eval\n", "mode: eval\nexpect: [{field: output, step: 1.0, runners: [keras-torch], reason: r}]\n"),
        ]
    )
    return EVAL_BN2D.replace(old, new, 1)


def _huge_integer(text: str, rng: random.Random) -> str:
    """Integers no framework takes, up to one past Python's int-string limit."""
    number = rng.choice([str(2**64), "-" + str(2**70), "9" * 5000, "1" + "0" * 30])
    field = rng.choice(["num_features: 2\n", "  seed: 1\n", "mode: eval\n", "graph_opset"])
    if field == "graph_opset":
        return GRAPH_NODE.replace("opset: 15", f"opset: {number}", 1)
    if field == "mode: eval\n":
        return EVAL_BN2D.replace(field, f"mode: eval\nmodel_seed: {number}\n", 1)
    return EVAL_BN2D.replace(field, field.replace(field.split(": ")[1].strip(), number), 1)


def _non_finite(text: str, rng: random.Random) -> str:
    """NaN and infinity in every numeric field but the input's literal values (and negative
    variances a graph case must refuse as a torch case does)."""
    value = rng.choice([".nan", ".inf", "-.inf"])
    where = rng.choice(
        ["graph_epsilon", "graph_momentum", "graph_mean", "graph_var", "keras", "tolerance", "input_mean", "input_std", "timeout"]
    )
    if where.startswith("graph_"):
        name = where.removeprefix("graph_")
        if name == "var" and rng.random() < 0.5:
            return GRAPH_NODE.replace("var: [2.0, 0.5]", "var: [-1.0, 0.5]", 1)
        old = {"epsilon": "epsilon: 1.0e-5", "momentum": "momentum: 0.9", "mean": "mean: [0.5, -0.5]", "var": "var: [2.0, 0.5]"}[name]
        new = f"{name}: {value}" if name in ("epsilon", "momentum") else f"{name}: [{value}, 0.5]"
        return GRAPH_NODE.replace(old, new, 1)
    addition = {
        "keras": f"keras: {{{rng.choice(['epsilon', 'momentum'])}: {value}}}\n",
        "tolerance": f"tolerance: {{float32: {{rtol: {value}, atol: 1.0e-5}}, reason: r}}\n",
        "input_mean": None,
        "input_std": None,
        "timeout": f"timeout: {value}\n",
    }[where]
    if addition is None:
        return EVAL_BN2D.replace("  seed: 1\n", f"  seed: 1\n  {where.removeprefix('input_')}: {value}\n", 1)
    return EVAL_BN2D + addition


def _non_text_key(text: str, rng: random.Random) -> str:
    """Keys YAML reads as numbers, booleans or null."""
    key = rng.choice(["1", "2.5", "true", "null", "[a, b]"])
    return rng.choice(
        [
            EVAL_BN2D.replace("  - forward\n", f"  - set_mode: {{{key}: eval}}\n", 1),
            EVAL_BN2D.replace("mode: eval\n", f"mode: {{{key}: train}}\n", 1),
            EVAL_BN2D.replace("bn:\n", f"bn:\n  {key}: 1\n", 1),
        ]
    )


def _graph_size(text: str, rng: random.Random) -> str:
    """A graph case's input above the cap that a torch case's has."""
    return GRAPH_NODE.replace("shape: [4, 2, 3]", rng.choice(["shape: [100000, 2, 1000, 1000]", "shape: [4194305, 2]"]), 1)


def _path_escape(text: str, rng: random.Random) -> str:
    """A backend test that would be read from outside the case's folder or onnx's data."""
    name = rng.choice(["../elsewhere", "/etc", "onnx:data/../../../..", "onnx:node/../../x", "../../../../../../tmp"])
    return f"description: reads from elsewhere\nonnx_backend_test: {name}\n"


def _duplicate_key(text: str, rng: random.Random) -> str:
    return text.replace("model:", "model: batchnorm1d\nmodel:", 1)


MUTATIONS: dict[str, Callable[[str, random.Random], str | bytes]] = {
    "broken_yaml": _broken_yaml,
    "wrong_type": _wrong_type,
    "unknown_key": _unknown_key,
    "huge_shape": _huge_shape,
    "negative_size": _negative_size,
    "nan_parameter": _nan_parameter,
    "python_tag": _python_tag,
    "deep_nesting": _deep_nesting,
    "alias_bomb": _alias_bomb,
    "enormous": _enormous,
    "not_text": _not_text,
    "not_a_mapping": _not_a_mapping,
    "bad_steps": _bad_steps,
    "duplicate_key": _duplicate_key,
    "integral_float": _integral_float,
    "huge_integer": _huge_integer,
    "non_finite": _non_finite,
    "non_text_key": _non_text_key,
    "graph_size": _graph_size,
    "path_escape": _path_escape,
}


def generate(directory: Path, count: int = 300, seed: int = 0) -> list[Path]:
    """Write `count` malformed case files (every mutation in turn, seeded) and return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = list(MUTATIONS)
    paths = []
    for index in range(count):
        mutation = names[index % len(names)]
        content = MUTATIONS[mutation](rng.choice(BASES), rng)
        path = directory / f"hostile_{index:04d}_{mutation}.yaml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1])
    written = generate(target, int(sys.argv[2]) if len(sys.argv) > 2 else 300, int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    print(f"{len(written)} malformed case files written to {target}")
