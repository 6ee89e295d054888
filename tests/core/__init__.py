"""In-process units of baponi_core with no server: the journal, address policy, admin rules."""
