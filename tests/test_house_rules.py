"""docs/style.md's house rules that a checkout enforces on itself (the import arrows are `make lint`'s lint-imports)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schema", "billing", "receiver", "sender", "scripts")
MAX_LINES = 400


def test_no_module_is_over_400_lines() -> None:
    """Every module of the packages and scripts has at most 400 lines; migration versions are generated."""
    modules = [
        path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "migrations/versions" not in path.relative_to(ROOT).as_posix()
    ]
    assert len(modules) > len(PACKAGES)  # the walk found the code
    sizes = {path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines()) for path in modules}
    too_long = {name: lines for name, lines in sizes.items() if lines > MAX_LINES}
    assert too_long == {}, f"modules over {MAX_LINES} lines, to split by role: {too_long}"


def test_code_imports_the_project_only_through_the_creditrelay_namespace() -> None:
    """``schema``, ``billing``, ``receiver`` and ``sender`` are folders of this checkout, installed only as
    ``creditrelay.*``: an import under the bare name would load a second copy here and fail once installed
    (or import somebody else's ``schema`` package)."""
    bare = re.compile(r"^\s*(?:from|import) (?:schema|billing|receiver|sender)\b", re.MULTILINE)
    files = [
        path
        for folder in (*PACKAGES, "tests")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if "seed_examples" not in path.parts
    ]
    assert len(files) > 50
    offenders = [path.relative_to(ROOT).as_posix() for path in files if bare.search(path.read_text())]
    assert offenders == []


def _imports_of(folder: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        if "seed_examples" in path.parts:
            continue
        names = set(re.findall(r"^\s*(?:from|import) (tests(?:\.\w+)*)", path.read_text(), re.MULTILINE))
        found[path.relative_to(ROOT).as_posix()] = names
    return found


def test_scripts_never_import_the_tests() -> None:
    """What a benchmark or the chaos run needs of the test helpers lives in scripts/ (tests may import it)."""
    imports = _imports_of("scripts")
    assert len(imports) > 5
    assert {path: names for path, names in imports.items() if names} == {}


def test_tests_share_helpers_only_through_tests_support() -> None:
    """A test module imports helpers from tests/support/, never from another test module or a conftest."""
    imports = _imports_of("tests")
    assert any(names for names in imports.values())
    wrong = {
        path: sorted(name for name in names if not name.startswith("tests.support"))
        for path, names in imports.items()
        if any(not name.startswith("tests.support") for name in names)
    }
    assert wrong == {}
