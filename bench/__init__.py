"""The benchmark suite of agent_server: ``python -m bench`` (``--help`` lists every flag).

Each section starts its own processes on 127.0.0.1 (the fake Messages API, ``agent-server serve`` and the
baseline proxy of ``baseline_proxy.py``), drives them from one asyncio client, and measures every figure
side by side with a baseline in the same run, interleaving the targets so that noise hits all of them:

=============  ============================================================================================
ttft           time to the first token: server, baseline proxy and the fake itself, at 1 and 64 streams
throughput     persisted POST /agent exchanges per second at 32 clients, against the proxy
fanout         200 SSE streams of 200 tokens: tokens/s, server CPU per 1,000 tokens, added inter-token delay
ws             1,000 idle WebSocket sessions (memory per session), then 200 active ones (replies/s, p99)
history        reply latency on 10/100/1,000-turn conversations, and in a database of 100k other turns
=============  ============================================================================================

Modules: ``runner`` runs the sections, ``procs`` owns the child processes, ``client`` holds the load
generator's HTTP/SSE/WebSocket primitives (httpx, websockets) and ``rawsse`` a lean SSE reader for the
high-concurrency streams, ``seed`` writes stored conversations with sqlite3, ``baseline_proxy`` is the
baseline, ``scenarios/*`` one section each, ``stats`` percentiles and the bootstrap intervals of the ttft
comparisons, ``report`` the targets and the table, ``profiling`` py-spy, ``cold_commit`` the opening
transaction's cost in a busy and in an idle process. ``ROUNDS.md`` keeps each optimisation round's figures.
"""
