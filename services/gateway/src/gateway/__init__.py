"""Scoreboard gateway service."""
