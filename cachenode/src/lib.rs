//! cachenode: the AZ cache tier over HTTP (skeleton; being built).
#![forbid(unsafe_code)]
