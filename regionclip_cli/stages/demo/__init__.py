"""The demo: every stage on the built-in world, then teacher vs student on held-out images."""
