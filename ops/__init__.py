"""Operations: the commands that run, watch and inspect a deployment (run, status, watch, forecast, report).

Nothing in the shared core (``minutecast``) imports this package; it may use every component and ``infra``.
"""
