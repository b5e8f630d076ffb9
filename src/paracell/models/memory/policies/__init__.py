"""Compiled hooks of each memory policy; the replay driver calls them by policy id."""
