"""Graph passes: each edits a `Graph` in place and records what it did."""
