//! sea-orm entities of sessiond: table shapes only, no runtime features.
pub mod user;
