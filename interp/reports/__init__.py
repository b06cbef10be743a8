"""The HTML reports of the paper analyses (``interp reproduce NAME``): one module per analysis."""
