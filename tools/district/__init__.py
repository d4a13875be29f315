"""`make district`: a simulated district checks the deadline alerts and panel (see __main__)."""
