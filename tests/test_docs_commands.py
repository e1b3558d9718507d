"""Every command the documentation shows is run, in page order, and does what the page says it does.

The convention (docs/testing.md): a ```console block holds commands that can run on a developer's machine,
each on a line starting with ``$ `` (a line ending in ``\\`` continues on the next one, a heredoc runs to its
terminator). The lines after a command, up to the next ``$ ``, are its output as the page shows it; ``…``
stands for any text, and a page may leave lines out. Commands that cannot run here (``make test``, docker,
systemctl, anything for a production host) are shown in ```sh or ```text blocks instead.

Each page runs in one bash session, in a scratch directory laid out like a checkout after ``make run``:
``.venv``, ``deploy`` and ``scripts`` linked from this checkout, a throwaway SQLite database in
``DATABASE_URL``, ``WEBHOOK_SECRET`` (also in ``data/dev-webhook-secret``) and ``ADMIN_TOKEN`` set, and
``.venv/bin`` first on ``PATH``. A page that talks to ``localhost:4000`` gets ``scripts/dev_server.py``
(what ``make run`` runs) on a free port; the page's ports 4000 and 4100 are rewritten to free ones.
"""

import ast
import importlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scripts.processes import free_port, stop, wait_healthy

pytestmark = pytest.mark.slow  # processes killed or many commands run: make test runs it, make test-fast does not

ROOT = Path(__file__).resolve().parents[1]
DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ALL_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RESULT_FILES = ROOT / "docs" / "benchmarks"  # dated measurements, kept as they were written
SECRET = "docs-webhook-secret-0123456789abcdef0123456789"
ADMIN_TOKEN = "docs-admin-token-0123456789abcdef0123456789"
SERVER_PORT, RELAY_PORT = 4000, 4100  # the ports the pages use (make run's, and the relay sidecar's)
COMMAND_TIMEOUT = 60.0
# creditrelay's settings (docs/configuration.md): none leaks from the developer's shell into a page's
SETTINGS = (
    *("DATABASE_", "WEBHOOK_", "ADMIN_", "NEW_API_", "CREDIT", "POLL_", "LOG_LEVEL", "USAGE_MATCH_"),
    *("BODY_READ_", "PROMETHEUS_", "FORWARDED_ALLOW_IPS", "BACKUP_DIR", "KEEP_DAYS", "VIRTUAL_ENV"),
    *("PORTAL_", "PUBLIC_BASE_URL", "EPAY_", "STRIPE_"),
)

# Commands a page shows in a console block that this test does not run, with the reason. Keep it short:
# a command that cannot run here belongs in a ```sh block.
SKIP: dict[str, str] = {}

FENCE = re.compile(r"^( *)```(\S*)\s*$")  # a fence indented inside a list item too
HEREDOC = re.compile(r"(?<!<)<<-?\s*['\"]?(\w+)['\"]?")  # not a here-string (<<<)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
DOC_PORT = re.compile(rf"(?:\b(?:localhost|127\.0\.0\.1):|--port )({SERVER_PORT}|{RELAY_PORT})\b")
LISTEN = re.compile(r"(?:--listen \S+:|--port )(\d+)")
INSIDER_WORDS = re.compile(r"seed 0\d\d|§|\.\./shared|CONTRACT\.md", re.IGNORECASE)


@dataclass
class Command:
    line: int  # where the command starts in its page, 1-based
    text: str
    output: list[str] = field(default_factory=list)


@dataclass
class Block:
    language: str
    line: int  # the line of the opening fence, 1-based
    lines: list[str]


def fenced_blocks(page: Path) -> list[Block]:
    blocks: list[Block] = []
    current: Block | None = None
    indent = ""
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        match = FENCE.match(line)
        if current is None and match:
            indent = match.group(1)
            current = Block(match.group(2), number, [])
        elif current is not None and line.rstrip() == f"{indent}```":
            blocks.append(current)
            current = None
        elif current is not None:
            current.lines.append(line.removeprefix(indent))
    assert current is None, f"{page.name}: the block opened on line {current.line} is never closed"
    return blocks


def console_commands(page: Path) -> list[Command]:
    """The page's console commands in order, each with the output the page shows for it."""
    commands: list[Command] = []
    for block in fenced_blocks(page):
        if block.language != "console":
            continue
        lines = iter(enumerate(block.lines, start=block.line + 1))
        command: Command | None = None
        for number, line in lines:
            if not line.startswith("$ "):
                assert command is not None, f"{page.name}:{number}: a console block starts with a command"
                command.output.append(line)
                continue
            command = Command(number, line[2:])
            commands.append(command)
            while command.text.endswith("\\"):
                command.text += "\n" + next(lines)[1]
            heredoc = HEREDOC.search(command.text)
            if heredoc:
                for _, body in lines:
                    command.text += "\n" + body
                    if body.strip() == heredoc.group(1):
                        break
    return commands


def output_matches(shown: list[str], actual: str) -> bool:
    """Each line the page shows matches a line of the actual output, in order (``…`` matches any text)."""
    patterns = [re.compile(".*".join(map(re.escape, line.strip().split("…")))) for line in shown if line.strip()]
    remaining = iter(line.strip() for line in actual.splitlines())
    return all(any(pattern.fullmatch(line) for line in remaining) for pattern in patterns)


class Shell:
    """One bash session, like a reader's terminal: variables and the directory carry over between commands."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,  # the session's process group holds what its commands leave running
        )
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
        """The command's exit status and its output (stdout and stderr together)."""
        marker = f"__docs_done_{uuid.uuid4().hex}__"
        assert self.process.stdin is not None
        self.process.stdin.write(f"{{ {command}\n}} </dev/null\nprintf '\\n{marker} %d\\n' $?\n".encode())
        self.process.stdin.flush()
        output: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no end after {timeout:g} s; output so far:\n{''.join(output)}") from None
            if line is None:
                raise AssertionError(f"the shell exited; output:\n{''.join(output)}")
            text = line.decode(errors="replace")
            if text.startswith(marker):
                return int(text.split()[1]), "".join(output).removesuffix("\n")
            output.append(text)

    def close(self) -> None:
        """End the session and whatever its commands started in the background (one process group)."""
        group = self.process.pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                self.process.poll()  # reap the shell: a zombie still counts as a member of the group
                try:
                    os.killpg(group, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        self.process.wait(10)


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, f"nothing listens on port {port} after {timeout:g} s"
        time.sleep(0.05)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A scratch directory laid out like a checkout after ``make run``, without its database."""
    for name in (".venv", "deploy", "scripts"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dev-webhook-secret").write_text(SECRET + "\n")
    return tmp_path


@pytest.fixture
def environment(checkout: Path) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS)}
    return inherited | {
        "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "DATABASE_URL": f"sqlite:///{checkout / 'x.db'}",
        "WEBHOOK_SECRET": SECRET,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "HOME": str(checkout),
    }


@pytest.fixture
def ports() -> dict[str, str]:
    return {str(SERVER_PORT): str(free_port()), str(RELAY_PORT): str(free_port())}


@pytest.fixture
def dev_server(checkout: Path, environment: dict[str, str], ports: dict[str, str]) -> Iterator[str]:
    """``make run``'s server, with its development secret from ``data/``, on this page's database."""
    port = ports[str(SERVER_PORT)]
    env = {k: v for k, v in environment.items() if k != "WEBHOOK_SECRET"}
    log = checkout / "make-run.log"
    command = [sys.executable, str(ROOT / "scripts" / "dev_server.py"), "--port", port, "--data-dir", "data"]
    with log.open("ab") as sink:
        server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=checkout)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/api/webhooks/health", server, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)


def _other_port(match: re.Match[str], ports: dict[str, str]) -> str:
    """A page's port, an address (``localhost:4000``) or an option (``--port 4100``), moved to a free one."""
    port = ports[match.group(1)]
    return f"--port {port}" if match.group(0).startswith("--") else f"127.0.0.1:{port}"


def page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("page", [p for p in DOC_PAGES if console_commands(p)], ids=page_id)
def test_page_commands_run_as_shown(
    page: Path, request: pytest.FixtureRequest, checkout: Path, environment: dict[str, str], ports: dict[str, str]
) -> None:
    """Every console command of the page exits 0, in order, and prints what the page shows."""
    commands = console_commands(page)
    if any(f":{SERVER_PORT}" in command.text for command in commands):
        request.getfixturevalue("dev_server")
    shell = Shell(checkout, environment)
    try:
        for command in commands:
            where = f"{page_id(page)}:{command.line}: {command.text.splitlines()[0]}"
            if any(command.text.startswith(prefix) for prefix in SKIP):
                continue
            text = DOC_PORT.sub(lambda match: _other_port(match, ports), command.text)
            status, output = shell.run(text)
            assert status == 0, f"{where}\nexited with {status}:\n{output}"
            assert output_matches(command.output, output), f"{where}\nshowed:\n{output}\nthe page says:\n" + "\n".join(
                command.output
            )
            if text.rstrip().endswith("&"):  # a server started in the background: wait until it listens
                for port in LISTEN.findall(text):
                    wait_listening(int(port))
    finally:
        shell.close()


def test_pages_mark_every_shell_block_as_run_or_shown() -> None:
    """A shell snippet is either ```console (run by this test) or ```sh/```text (shown only): never an
    unmarked or ```bash block that nobody runs."""
    unmarked = [
        f"{page_id(page)}:{block.line}"
        for page in DOC_PAGES
        for block in fenced_blocks(page)
        if block.language in ("", "bash", "shell", "zsh")
    ]
    assert unmarked == []


def test_python_examples_import_what_exists() -> None:
    """Every import in a ```python block of the pages names a module and a name that the package has."""
    missing = []
    for page in DOC_PAGES:
        for block in fenced_blocks(page):
            if block.language != "python":
                continue
            source = "\n".join(block.lines)
            tree = compile(source, page.name, "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        importlib.import_module(alias.name)
                elif isinstance(node, ast.ImportFrom) and node.module:
                    module = importlib.import_module(node.module)
                    missing += [
                        f"{page_id(page)}:{block.line}: {node.module}.{alias.name}"
                        for alias in node.names
                        if not hasattr(module, alias.name)
                    ]
    assert missing == []


def test_links_between_pages_resolve() -> None:
    """Every relative link of the README and docs/ points at a file of the checkout."""
    broken = []
    for page in ALL_PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page_id(page)}: {target}")
    assert broken == []


def test_user_pages_use_no_insider_words() -> None:
    """The pages speak the project's own words: no seeds, contract sections or files outside the clone
    (the dated result files under docs/benchmarks/ are kept as they were written)."""
    found = [
        f"{page_id(page)}:{number}: {match.group(0)}"
        for page in ALL_PAGES
        if RESULT_FILES not in page.parents
        for number, line in enumerate(page.read_text().splitlines(), start=1)
        for match in INSIDER_WORDS.finditer(line)
    ]
    assert found == []
