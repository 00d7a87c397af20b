"""Errors that reach the user as one line, not a traceback."""


class UserError(Exception):
  """Bad input or configuration. The message names the file or config key."""
