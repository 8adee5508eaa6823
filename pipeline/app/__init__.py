"""The application on top: the composition root (gateway), replay, address verification, the CLI and the test harness."""
