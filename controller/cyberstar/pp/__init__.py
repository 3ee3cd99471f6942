"""The PP node: the XDP program served over P4Runtime (`cyberstar pp serve`)."""
