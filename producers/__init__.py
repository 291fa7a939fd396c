"""Producers: publish 1-minute bars into Kafka from yfinance, recorded files or a synthetic model.

    minutecast produce --source yfinance|replay|synthetic ...   (see producers/cli.py)
"""
