//! RFC 3339 timestamps, as the command line reads them (carnet-json's, shared with the server).

pub use carnet_json::parse_rfc3339;
