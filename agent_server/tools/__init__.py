"""Tools the model may call: Python functions, MCP servers' tools, Anthropic server tools and client tools,
declared in ``AGENT_TOOLS_FILE`` (``config``) and gathered in one ``ToolRegistry``. One module per kind."""
