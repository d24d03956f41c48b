"""One log format for every process of the suite."""

import logging
import os


def setup_logging(service_name: str) -> None:
    """Logs to stderr at LOG_LEVEL (INFO by default), each line naming the service."""
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s %(levelname)s {service_name} %(name)s: %(message)s",
    )
