//! Prometheus text exposition: metric lines with escaped labels.
