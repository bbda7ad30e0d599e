import logging

# The agent logs every command; tests assert on frames, not on logs.
logging.basicConfig(level=logging.CRITICAL)
