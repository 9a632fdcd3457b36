"""The MCP server: every entry script as a typed tool (catalog) served over stdio (server)."""
