"""ttcp's domain: the TCP RTT tracer, its filter language, events, histograms and
the filter table over the program's maps."""
