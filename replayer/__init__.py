"""replayer: replays tapes against a target as an honest, open-loop load test."""
