"""Outbound connections made by the server on a user's behalf."""
