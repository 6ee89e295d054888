"""The REST API through a real `baponi serve`: raw HTTP and the official SDK."""
