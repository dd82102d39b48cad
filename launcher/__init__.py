"""`make run`: the whole product on one machine, each part in its own process."""
