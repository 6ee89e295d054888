"""The public library API: baponi_core.Embedded, its sessions, the mountable apps."""
