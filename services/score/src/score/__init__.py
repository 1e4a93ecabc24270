"""Scoreboard score service."""
