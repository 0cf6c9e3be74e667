"""Pure decision logic: no I/O, no clock reads, no sleeping. `now` and outcomes in, decisions out."""
