"""minutecast: 5-minute-ahead forecasts for every S&P 500 stock from live 1-minute bars.

The shared package: what every part (producers, streams, training) must agree on lives here, once.
"""

__version__ = "0.1.0"
