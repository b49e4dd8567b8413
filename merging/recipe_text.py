"""Reading recipe text safely: a bounded file read, UTF-8 only (other encodings get a message saying how to convert),
and a YAML parse (safe loader) that refuses alias bombs, self-referring aliases and deep nesting before building any
Python value. Also the helpers that keep every message short: values quoted in messages are cut.

Everything raises RecipeError naming the file (or "the recipe") and what to change; nothing here can hang on a small
hostile input or end in RecursionError.
"""

from __future__ import annotations

import codecs
import errno
from pathlib import Path
from typing import Any

import yaml

from merging.errors import RecipeError

# Bounds on what a recipe may be, so a small hostile file cannot hang `check`/`run` or flood the output (YAML
# aliases can make a few hundred bytes expand to billions of values). A learned recipe for a 70B model with 8
# experts (one `{filter, value}` entry per tensor and expert) is ~2 MB and ~30k values, well inside them.
MAX_RECIPE_BYTES = 4 * 1024 * 1024
MAX_RECIPE_VALUES = 300_000  # YAML nodes (mappings, lists, scalars) after alias expansion
MAX_RECIPE_DEPTH = 32  # nesting of mappings and lists (a recipe needs about 7)
MAX_MODELS = 256
MAX_LISTED_PROBLEMS = 20  # more are summarised as "…and N more"
MAX_PROBLEM_CHARS = 600
MAX_QUOTED_CHARS = 80  # a value quoted in a message is cut to this


def is_file(path: Path) -> bool:
    """Path.is_file() that answers False instead of raising for names the file system refuses."""
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, or one with a NUL byte: not a file
        return False


def read_recipe_text(path: Path) -> str:
    """The text of a recipe file: at most MAX_RECIPE_BYTES, UTF-8 (a UTF-8 byte-order mark is allowed). Anything
    else raises RecipeError naming the file and what to do."""
    shown = quote(str(path))
    try:
        if path.is_dir():
            raise RecipeError(f"recipe file {shown} is a folder: give the recipe's YAML file")
        if not path.is_file():
            raise RecipeError(f"recipe file {shown} not found: check the path")
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise RecipeError(f"recipe file {shown} is {size / 1e6:.1f} MB; a recipe may be at most "
                              f"{MAX_RECIPE_BYTES / 1e6:.0f} MB: give the recipe YAML, not a model or data file")
        with open(path, "rb") as handle:
            raw = handle.read(MAX_RECIPE_BYTES + 1)
    except OSError as error:
        raise RecipeError(f"cannot read recipe file {shown}: {error.strerror or error}; "
                          + _os_error_hint(error)) from None
    if len(raw) > MAX_RECIPE_BYTES:  # grew while being read, or a device file
        raise RecipeError(f"recipe file {shown} is larger than {MAX_RECIPE_BYTES / 1e6:.0f} MB; give the recipe "
                          "YAML, not a model or data file")
    return decode_recipe_bytes(raw, shown)


def decode_recipe_bytes(raw: bytes, shown: str) -> str:
    """UTF-8 text (a UTF-8 BOM dropped), or a RecipeError saying which encoding the file seems to have."""
    utf32 = raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE))  # before UTF-16: FF FE 00 00 starts both
    if utf32 or raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in raw:
        kind = "UTF-32" if utf32 else "UTF-16" if raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else None
        if kind is None:
            raise RecipeError(f"recipe file {shown} holds NUL bytes: it is UTF-16/UTF-32 text without a byte-order "
                              "mark, or not a text file at all; save the recipe as UTF-8 text")
        raise RecipeError(f"recipe file {shown} is encoded as {kind}; recipes are UTF-8 (as mergekit reads them): "
                          f"save it as UTF-8, e.g. `iconv -f {kind} -t UTF-8 in.yaml > out.yaml`")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        byte = raw[error.start]
        raise RecipeError(f"recipe file {shown} is not UTF-8: byte 0x{byte:02x} on line {line} cannot be decoded "
                          "(Latin-1 or Windows-1252 text?); save the file as UTF-8, e.g. "
                          "`iconv -f LATIN1 -t UTF-8 in.yaml > out.yaml`") from None


def _os_error_hint(error: OSError) -> str:
    hints = {errno.ENAMETOOLONG: "a file or folder name is too long for the file system (most allow 255 bytes "
                                 "per name): shorten it",
             errno.EACCES: "check the file's permissions",
             errno.EISDIR: "give the YAML file, not a folder"}
    return hints.get(error.errno, "check the path")


def _yaml_loader_class() -> type:
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: the same safe constructor, faster


def parse_yaml(text: str, where: str = "the recipe") -> Any:
    """yaml.safe_load with bounds: the text's size, the number of values after alias expansion, and the nesting
    depth. Raises RecipeError (never RecursionError or a hang) naming `where` and what to change."""
    if len(text) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{where} is {len(text) / 1e6:.1f} MB of text; a recipe may be at most "
                          f"{MAX_RECIPE_BYTES / 1e6:.0f} MB")
    loader = _yaml_loader_class()(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:  # the pure-Python composer recurses once per level
            raise RecipeError(_too_deep(where)) from None
        if node is None:
            return None
        _check_node_bounds(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        if "nesting depth" in str(error):  # libyaml's own limit (1000 levels)
            raise RecipeError(_too_deep(where)) from None
        raise RecipeError(f"{where} is not valid YAML ({cut(str(error), 400)}); fix the syntax at the line "
                          "shown") from None
    except (ValueError, OverflowError) as error:  # Python refuses integers of more than 4300 digits
        what = "an integer with thousands of digits" if "digits" in str(error) else cut(str(error), 200)
        raise RecipeError(f"{where} holds a value that cannot be read ({what}): use numbers of ordinary "
                          "size") from None
    finally:
        loader.dispose()


def _check_node_bounds(root: Any, where: str) -> None:
    """Count the values a YAML node graph expands to (aliases counted every time they are used), its depth, and
    whether it refers to itself, without expanding it: one pass over the distinct nodes, memoised."""
    expanded: dict[int, int] = {}  # id(node) -> values it expands to
    on_path: set[int] = set()
    # Iterative post-order walk (a recursive one would hit Python's recursion limit on hostile input).
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = _node_children(node)
        if children_done:
            on_path.discard(key)
            expanded[key] = 1 + sum(expanded.get(id(c), 1) for c in children)  # a scalar counts 1
            if expanded[key] > MAX_RECIPE_VALUES:
                raise RecipeError(f"{where} expands to more than {MAX_RECIPE_VALUES:,} values (YAML aliases `*name` "
                                  "repeat what their anchor `&name` holds, and nested ones multiply): write the "
                                  "recipe without such repetition")
            continue
        if key in expanded:
            continue
        if key in on_path:
            raise RecipeError(f"{where} has a YAML alias that refers to itself (an `&anchor` used inside its own "
                              "value), which makes an endless value: remove that alias")
        on_path.add(key)
        stack.append((node, True))
        if len(on_path) > MAX_RECIPE_DEPTH:  # on_path is the chain of nodes from the root to this one
            raise RecipeError(_too_deep(where))
        stack.extend((c, False) for c in children if not isinstance(c, yaml.ScalarNode) and id(c) not in expanded)


def _too_deep(where: str) -> str:
    return (f"{where} is nested more than {MAX_RECIPE_DEPTH} levels deep (lists and mappings inside each other); "
            "a recipe needs about 7: flatten it")


def _node_children(node: Any) -> list[Any]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def quote(value: Any, limit: int = MAX_QUOTED_CHARS) -> str:
    """repr(value) cut to `limit` characters, for messages (values can be huge: long strings, deep structures,
    integers with thousands of digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**limit:
        return f"<an integer of about {value.bit_length() * 0.30103:.0f} digits>"
    if isinstance(value, (list, dict)) and _too_big_to_show(value, limit):
        kind = "list" if isinstance(value, list) else "mapping"
        return f"<a {kind} of {len(value)} entries>"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"<a {type(value).__name__} too large to show>"
    return cut(text, limit)


def _too_big_to_show(value: Any, limit: int) -> bool:
    """True when repr(value) would certainly pass `limit` characters (checked without building it)."""
    budget = [limit]

    def walk(v: Any, level: int) -> bool:
        budget[0] -= 2
        if budget[0] < 0 or level > 8:
            return True
        if isinstance(v, dict):
            return any(walk(k, level + 1) or walk(x, level + 1) for k, x in v.items())
        if isinstance(v, list):
            return any(walk(x, level + 1) for x in v)
        budget[0] -= len(v) if isinstance(v, str) else 4
        return budget[0] < 0

    return walk(value, 0)


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"
