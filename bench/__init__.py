"""The benchmark suite of agent_server: ``python -m bench`` (``--help`` lists every flag).

Each section starts its own processes on 127.0.0.1 (the fake Messages API, ``agent-server serve`` and the
baseline proxy of ``baseline_proxy.py``), drives them from one asyncio client (or wrk), and measures every figure
side by side with a baseline in the same run, interleaving the targets so that noise hits all of them:

=============  ============================================================================================
ttft           time to the first token: server, baseline proxy and the fake itself, at 1 and 64 streams
throughput     persisted POST /agent exchanges per second at 32 clients, against the proxy
fanout         200 SSE streams of 200 tokens: tokens/s, server CPU per 1,000 tokens, added inter-token delay
ws             1,000 idle WebSocket sessions (memory per session), then 200 active ones (replies/s, p99)
history        reply latency on 10/100/1,000-turn conversations, and in a database of 100k other turns
tools          a 5-step reply with a no-op tool against the SDK's tool runner: added time per step, 1 and 16
wrk            persisted POST /agent driven by wrk (1 thread, 32 connections): exchanges/s, CPU per exchange
resume         replaying a finished 2,000-token reply, reconnecting to a running one, bytes per stored event
caching        input cost of a 30-exchange conversation with prompt caching on vs off; outgrowing the window
backends       SQLite and PostgreSQL side by side: TTFT at 1 and 64 streams, wrk throughput at 1 and 2 workers
=============  ============================================================================================

``--database postgres`` runs every section on a throwaway PostgreSQL cluster (``postgres``) instead of SQLite
files (``dbs`` hides the difference from the sections).

Modules: ``runner`` runs the sections, ``procs`` owns the child processes, ``client`` holds the load
generator's HTTP/SSE/WebSocket primitives (httpx, websockets) and ``rawsse`` a lean SSE reader for the
high-concurrency streams, ``wrk`` drives wrk (``wrk_post.lua``), ``seed`` writes stored conversations with
agent_server's own statements, ``dbs``/``postgres`` the databases, ``fake_agent`` the fake with a model that asks
for tools, ``tools_noop`` the tool, ``baseline_proxy`` is the baseline (with the SDK's tool runner),
``scenarios/*`` one section each, ``stats`` percentiles and the bootstrap intervals of the comparisons,
``report`` the targets, the console table and the README's (``python -m bench.report``), ``profiling`` py-spy,
``cold_commit`` the opening transaction's cost in a busy and in an idle process. ``ROUNDS.md`` keeps each
optimisation round's figures.
"""
