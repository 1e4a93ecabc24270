"""Scoreboard broadcaster service."""
