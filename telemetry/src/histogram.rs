//! Percentiles of samples and of bucketed histograms.
