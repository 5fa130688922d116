"""The reply as a process: typed events, the journal that numbers and stores them, the history rules and the
context window, one upstream call per step, the tools between steps, and the supervisor of running replies."""
