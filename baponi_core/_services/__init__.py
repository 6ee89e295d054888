"""Services: what every adapter (REST, MCP, CLI) calls. They hold all the rules."""
