"""The sandbox handle's contract: prepare, attach, start, wait/kill, close."""
