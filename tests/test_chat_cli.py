"""indexmem-chat driven as a user drives it: in a pseudo-terminal, turn by turn, past the budget,
with /stats, /save and /load across processes, a corrupt session, Ctrl-C and Ctrl-D."""

import fcntl
import inspect
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time

import pytest
from test_indexmem import setup  # noqa: F401  (tiny f32 llama + random IndexMem sidecar)

TURNS = ["tell me about ships", "and the sea?", "why is it blue", "what about rivers", "and lakes"]
PROMPT = b"\n> "


class Terminal:
    """A chat process on a pseudo-terminal (so it is interactive, and Ctrl-C is a signal)."""

    def __init__(self, args: list[str]):
        env = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "PYTHONUNBUFFERED": "1"}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes the chat
            os.execvpe(sys.executable, [sys.executable, "-m", "indexmem.cli.chat", *args], env)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.out = b""

    def read_until(self, done, timeout: float = 120.0) -> bytes:
        start, deadline = len(self.out), time.monotonic() + timeout
        while not done(self.out[start:]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no prompt; the chat printed: {self.out[-2000:]!r}")
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    break
                self.out += chunk
        return self.out[start:]

    def prompt(self, timeout: float = 120.0) -> bytes:
        return self.read_until(lambda b: b.endswith(PROMPT) or b.startswith(b"> "), timeout)

    def send(self, line: str) -> str:
        """Type ``line`` and return what the chat printed before its next prompt."""
        os.write(self.fd, line.encode() + b"\r")
        text = self.prompt().decode(errors="replace").replace("\r", "")
        echoed = text.split("\n", 1)[1] if "\n" in text else ""
        return echoed[: -len("\n> ")] if echoed.endswith("\n> ") else echoed

    def exit_code(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            self.read_until(lambda b: False, timeout=0.5)
        os.kill(self.pid, signal.SIGKILL)
        raise TimeoutError("the chat did not exit")


@pytest.fixture()
def chat_args(setup):  # noqa: F811
    base, side, _ = setup
    return [
        "--model",
        str(base),
        "--indexmem",
        str(side),
        "--policy",
        "indexmem",
        "--memory",
        "--budget",
        "48",
        "--window",
        "8",
        "--tau",
        "4",
        "--batch",
        "16",
        "--n-ctx",
        "256",
        "--seed",
        "1",
        "--max-tokens",
        "16",
    ]


def test_a_conversation_past_the_budget_saved_and_continued_in_a_new_process(chat_args, tmp_path):
    first = Terminal(chat_args)
    first.prompt()
    for text in TURNS[:4]:
        assert first.send(text).strip()
    stats = first.send("/stats")
    conv = int(re.search(r"conversation\s+(\d+) tokens", stats).group(1))
    evicted = re.search(r"evicted\s+(\d+)", stats)
    assert conv > 48 and evicted and int(evicted.group(1)) > 0, stats
    session = tmp_path / "chat.session"
    assert "saved" in first.send(f"/save {session}")
    expected = first.send(TURNS[4])
    os.write(first.fd, b"\x04")  # Ctrl-D
    assert first.exit_code() == 0

    second = Terminal(chat_args)
    second.prompt()
    assert f"{conv} tokens" in second.send(f"/load {session}")
    assert second.send(TURNS[4]) == expected
    corrupt = tmp_path / "corrupt.session"
    raw = bytearray(session.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(raw))
    refused = second.send(f"/load {corrupt}")
    assert "error:" in refused and "checksum" in refused
    assert "error:" in second.send(f"/load {tmp_path / 'missing.session'}")
    assert second.send("still there?").strip()  # the chat goes on after refusing the files
    assert "unknown command" in second.send("/frobnicate")
    assert "/save FILE" in second.send("/help")
    assert "new conversation" in second.send("/reset")
    os.write(second.fd, b"\x04")
    assert second.exit_code() == 0


def test_ctrl_c_stops_the_reply_not_the_program(chat_args, tmp_path):
    # a reply that would run for minutes: a grammar that never completes never allows the end token
    endless = tmp_path / "endless.gbnf"
    endless.write_text("root ::= [a-z ] root\n")
    args = chat_args[:-1] + ["100000", "--grammar-file", str(endless)]
    term = Terminal(args + ["--temperature", "1.0", "--seed", "3"])
    term.prompt()
    for turn in ("tell me everything", "and again"):  # the chat replies again after a stop
        os.write(term.fd, turn.encode() + b"\r")
        term.read_until(lambda b: len(b) > 200, timeout=60)  # the reply is streaming
        os.write(term.fd, b"\x03")  # Ctrl-C
        assert b"[stopped]" in term.prompt(timeout=60)
    os.write(term.fd, b"\x04")
    assert term.exit_code() == 0


@pytest.mark.parametrize("module", ["chat", "serve"])
@pytest.mark.parametrize("flags, memory", [([], None), (["--memory"], True), (["--no-memory"], False)])
def test_memory_flag_left_out_lets_the_engine_choose(module, flags, memory, monkeypatch):
    import importlib

    from typer.testing import CliRunner

    cli = importlib.import_module(f"indexmem.cli.{module}")
    seen = {}

    real_signature = inspect.signature(cli.load_engine)

    def fake_load_engine(*args, **kwargs):
        seen["memory"] = real_signature.bind(*args, **kwargs).arguments["memory"]
        raise SystemExit(0)

    monkeypatch.setattr(cli, "load_engine", fake_load_engine)
    result = CliRunner().invoke(cli.app, ["--prompt", "hi"] * (module == "chat") + flags)
    assert result.exit_code == 0, result.output
    assert seen == {"memory": memory}
