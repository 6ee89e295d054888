"""The MCP server: in-process, over stdio (`baponi-mcp`), over HTTP (/mcp), and the Inspector."""
