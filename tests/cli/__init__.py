"""The operator CLI and the one-server-per-home lock: real processes on real homes."""
