"""Long-lived sandboxes (OpenSandbox's model): a sandbox kept open between requests, that
runs many processes over its life, until it is deleted, expires, or the server stops.

Only their records and what a start does with those a previous server left are built so
far; docs/opensandbox.md says what comes next."""
