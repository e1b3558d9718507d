"""STYLE.md's house rules that a checkout enforces on itself (the import arrows are `make lint`'s lint-imports)."""

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
