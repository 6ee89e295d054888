"""The Store: a contract suite every implementation runs, and the SQLite file itself."""
