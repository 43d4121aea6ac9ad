"""The server under concurrent load on loopback: streaming and whole requests at once, clients
that leave mid-stream or mid-wait, malformed and oversized bodies, the queue bound answering 503;
and a short run of the load script (bench/server_load.py)."""

import threading

import pytest
from indexmem.bench import server_load
from indexmem.bench.load_requests import Client
from serving import running_server

MAX_BODY = 4096


@pytest.fixture(scope="module")
def server(tiny_llama):
    options = ["--n-ctx", "512", "--max-request-bytes", str(MAX_BODY), "--max-tokens", "400", "--queue", "2"]
    with running_server(tiny_llama, *options) as (base, proc):
        yield int(base.rsplit(":", 1)[1]), proc


def at_once(n: int, call) -> list:
    """``call(i)`` from ``n`` threads released together."""
    barrier, results = threading.Barrier(n), [None] * n

    def run(i):
        barrier.wait()
        try:
            results[i] = call(i)
        except Exception as exc:  # noqa: BLE001 (reported to the test)
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results


def test_concurrent_mixed_requests_are_all_answered_and_the_queue_bound_says_503(server):
    port, proc = server
    client = Client("127.0.0.1", port, timeout=120, max_tokens=300, max_body=MAX_BODY)
    kinds = [
        client.whole,
        client.stream,
        lambda i: client.stream(i, leave_after=2),
        client.malformed,
        client.oversized,
    ]
    outcomes = at_once(16, lambda i: kinds[i % len(kinds)](i))
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    statuses = [o.status for o in outcomes]
    assert set(statuses) <= {200, 400, 413, 503}, statuses
    assert 503 in statuses  # 16 at once, one running and two waiting: the rest are refused
    assert all(o.ok for o in outcomes if o.status != 503), outcomes
    assert proc.poll() is None
    assert client.whole(99).status == 200  # and it goes on serving


def test_clients_that_leave_do_not_stop_the_server(server):
    port, _ = server
    leaving = Client("127.0.0.1", port, timeout=0.3, max_tokens=400, max_body=MAX_BODY)
    for i in range(3):
        try:
            leaving.whole(i)  # gives up after 0.3 s, most likely while its reply is generated
        except OSError:
            pass
        assert leaving.stream(i, leave_after=1).status == 200
    client = Client("127.0.0.1", port, timeout=120, max_tokens=8, max_body=MAX_BODY)
    assert [client.whole(i).status for i in range(3)] == [200, 200, 200]


def test_the_load_script_holds_on_a_short_run(tiny_llama, capsys):
    with pytest.raises(SystemExit) as done:
        server_load.main(
            ["--model", str(tiny_llama), "--clients", "6", "--duration", "8", "--max-tokens", "24"]
        )
    out = capsys.readouterr().out
    assert done.value.code == 0, out
    assert "p50" in out and "tok/s" in out and "RSS" in out
