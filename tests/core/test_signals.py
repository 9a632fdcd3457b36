"""Signals at the edges: start-up, the final write, a second signal on the way out.

The contract: exactly one JSON document on stdout, exit code 130 for an interrupt, however
the signals fall. Real processes are used where the process boundary is the point.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from helpers import ROOT, SCRIPTS

# Bounded waits for the child processes (real seconds; the machine may be loaded).
CHILD_TIMEOUT_SECONDS = 60.0


def one_document(text: str) -> dict:
    """stdout holds exactly one JSON object (json.loads refuses trailing data)."""
    return json.loads(text)


@pytest.fixture
def hanging_api():
    """A loopback port that accepts connections and never answers: a request hangs there.
    Yields (host URL, event set once a client connected)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    connected = threading.Event()
    stop = threading.Event()
    held = []

    def accept():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)
            connected.set()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", connected
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def start(script: str, host: str) -> subprocess.Popen:
    env = {**os.environ, "AUTODL_HOST": host, "AUTODL_TOKEN": "test-token-0123456789", "AUTODL_HTTP_TIMEOUT": "30"}
    return subprocess.Popen([sys.executable, str(SCRIPTS / script), "--quiet"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("second_after", [None, 0.05])
def test_one_document_and_130_however_many_signals(hanging_api, signum, second_after):
    host, connected = hanging_api
    child = start("list_images.py", host)
    try:
        assert connected.wait(CHILD_TIMEOUT_SECONDS), "the script never reached the API"
        child.send_signal(signum)
        if second_after is not None:
            time.sleep(second_after)
            child.send_signal(signum)
        out, err = child.communicate(timeout=CHILD_TIMEOUT_SECONDS)
    finally:
        child.kill()
    document = one_document(out)
    assert (child.returncode, document["error_type"]) == (130, "interrupted"), err
    assert document["details"]["signal"] == signal.Signals(signum).name
    assert "Traceback" not in err


def test_a_signal_during_start_up_still_gets_its_document():
    """Before run() takes over (slow imports, the parser), the start-up handler answers."""
    program = (
        "import os, signal, sys, time; sys.path.insert(0, {scripts!r});"
        "from autodl_esd.core import cli; cli.install_startup_handlers();"
        "os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)"
    ).format(scripts=str(SCRIPTS))
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=CHILD_TIMEOUT_SECONDS)
    document = one_document(done.stdout)
    assert (done.returncode, document["error_type"]) == (130, "interrupted")
    assert "什么都没有做" in document["message"]


def test_start_up_handlers_are_only_for_the_bundles_entry_scripts():
    from autodl_esd.core import cli

    assert cli.is_entry_script(str(ROOT / "queue_submit.py"))
    assert cli.is_entry_script(str(SCRIPTS / "list_images.py"))
    assert not cli.is_entry_script(str(ROOT / "tests" / "core" / "test_signals.py"))
    assert not cli.is_entry_script(None)
    # Imported by pytest (not an entry script), cli left this process's handlers alone.
    assert signal.getsignal(signal.SIGINT) is not cli._interrupted_during_startup


def test_an_entry_script_installs_them_when_it_imports_cli(tmp_path):
    probe = SCRIPTS / "_probe_startup_handlers.py"
    probe.write_text("import signal\nfrom autodl_esd.core import cli\nprint(signal.getsignal(signal.SIGTERM).__name__)\n",
                     encoding="utf-8")
    try:
        done = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=CHILD_TIMEOUT_SECONDS)
    finally:
        probe.unlink()
    assert done.stdout.strip() == "_interrupted_during_startup", done.stderr


class SignallingStream:
    """stdout that receives a SIGTERM in the middle of the final document."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        if not self.parts:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered before this write returns
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_a_signal_during_the_final_write_leaves_one_document(monkeypatch):
    from autodl_esd.core import cli

    stream = SignallingStream()
    monkeypatch.setattr(sys, "stdout", stream)
    parser = cli.make_parser("big.py", "一个很大的结果")
    code = cli.run(parser, lambda args, ctx: {"items": [{"n": i, "text": "x" * 100} for i in range(2000)], "count": 2000}, [])
    document = one_document("".join(stream.parts))
    assert code == 0 and document["status"] == "success" and document["count"] == 2000
