"""Scoreboard auth service."""
