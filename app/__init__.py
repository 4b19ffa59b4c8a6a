"""The fkd dashboard (``panel serve app/``): leaderboard, face grid and data overview."""
