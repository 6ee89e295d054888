"""The escape and abuse battery, through the HTTP API of a real server."""
