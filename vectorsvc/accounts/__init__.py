"""Users, workspace membership and browser sessions (sign-in, refresh, sign-out)."""
