"""`python -m agent_server.fake_upstream`: the fake Messages API in the foreground.

Prints exactly one line, `fake-upstream listening on http://HOST:PORT`, once the socket is
bound, so a parent process (a benchmark, an e2e test) can read the port it got from `--port 0`.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import sys

from .app import FakeConfig
from .replies import TTFT_CLOCKS
from .server import build_server


def _loopback(host: str) -> str:
    if host == "localhost":
        return host
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"refusing to listen on non-loopback host {host!r}: this is a test fake")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agent_server.fake_upstream", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--host", type=_loopback, default="127.0.0.1", help="a loopback address")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--ttft", type=float, default=0.0, help="seconds before the first token")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--n-tokens", type=int, default=None, help="reply length; default echoes the prompt")
    parser.add_argument("--require-key", default=None, help="the only API key accepted")
    parser.add_argument("--ttft-from", choices=TTFT_CLOCKS, default="accepted",
                        help="when the time to first token starts: when the reply is accepted (like a real model), "
                             "or once the response head is sent (this fake's old behaviour)")
    parser.add_argument("--log-level", default="warning", help="uvicorn's log level")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    config = FakeConfig(
        ttft=args.ttft, token_delay=args.token_delay, n_tokens=args.n_tokens, require_key=args.require_key,
        ttft_from=args.ttft_from,
    )
    host_in_url = f"[{args.host}]" if ":" in args.host else args.host

    def announce(port: int) -> None:
        # Like agent-server: what is alive once serving starts stays out of later full garbage collections,
        # which otherwise walk every module's objects (~10 ms each: a pause in the middle of some reply).
        gc.collect()
        gc.freeze()
        print(f"fake-upstream listening on http://{host_in_url}:{port}", flush=True)

    server = build_server(config, host=args.host, port=args.port, on_ready=announce, log_level=args.log_level)
    server.run()
    sys.exit(0 if server.started else 1)


if __name__ == "__main__":
    main()
