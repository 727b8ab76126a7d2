"""Load forecasting for dopd: trace loaders, load series, statsmodels models with automatic choice and
upper quantiles, backtests. See docs/forecaster.md.

Import the modules you need (`dopd_forecaster.traces`, `.series`, `.forecaster`, `.cli`); nothing is
re-exported here so that loading traces never pulls in statsmodels.
"""
