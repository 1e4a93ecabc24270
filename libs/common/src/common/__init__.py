"""What the Scoreboard services share."""
