"""The PP node: the XDP program served over P4Runtime (`cyberstar pp serve`)."""

# The agent's pause after a read of its punt buffer that found several punts (`pp/agent.py`),
# here so that the command line names it without loading the agent.
PUNT_COALESCE_US = 500
MAX_PUNT_COALESCE_US = 100_000
