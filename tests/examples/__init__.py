"""Every runnable example in examples/, run as a user would run it."""
