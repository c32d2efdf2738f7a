"""The base class of every error the project raises on purpose.

An `MrfError` is a problem with the input, the settings or the environment that its message explains
(naming the field, value and fix); the command line prints it as one line. Anything else is a bug: the
command line shows its traceback and asks for a report. It derives from ValueError so that callers that
caught the former ValueError subclasses keep working.
"""


class MrfError(ValueError):
    """An explained failure: the message names what is wrong and how to fix it."""
